"""The local training backend runs the real entry point (`python -m include.trainer`) as a subprocess.

A separate tier from tests/unit: even one tiny `tune` imports TensorFlow and keras-tuner in a new process.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.contract.features import LABEL_KEY, MODEL_FEATURES, SCHEDULE_CATEGORICAL
from include.contract.inputs import NUMERIC
from include.contract.training import TREE_MAX_DEPTH

pytestmark = pytest.mark.integration


def _tiny_dataset(folder: Path) -> str:
    """train/validation/test parquet files of a few hundred synthetic flights: every model input and the label."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, rows in (("train", 300), ("validation", 90), ("test", 90)):
        frame = pd.DataFrame({f: rng.normal(size=rows) for f in MODEL_FEATURES if f not in SCHEDULE_CATEGORICAL})
        for column in SCHEDULE_CATEGORICAL:
            frame[column] = rng.choice(["A", "B", "C"], size=rows)
        frame["flight_date"] = dt.date(2013, 1, 1)
        frame[LABEL_KEY] = frame["temp"] + frame["precip"] > 0  # learnable in one epoch
        frame.to_parquet(folder / f"{split}.parquet")
    return folder.as_uri()


def test_local_backend_runs_the_training_entry_point_and_returns_its_summary(tmp_path, capfd) -> None:
    from include.train.backends import run_training_cli

    out = (tmp_path / "model").as_uri()
    summary = run_training_cli(["tune", "--dataset", _tiny_dataset(tmp_path / "dataset"), "--out", out,
                                "--seed", "3", "--tuner", "random", "--max-trials", "1", "--epochs", "1",
                                "--ensemble-size", "1"])  # fmt: skip
    assert capfd.readouterr().out.startswith(f"running: {sys.executable} -m include.trainer tune --dataset ")
    assert (summary["command"], summary["tuner"], summary["trials"], summary["out"]) == ("tune", "random", 1, out)
    assert [m["index"] for m in summary["members"]] == [0]
    assert 0.0 <= summary["members"][0]["val_auc"] <= 1.0
    written = tmp_path / "model"
    assert json.loads((written / "tune.json").read_text()) == summary  # what `evaluate` reads back
    assert (written / "member_0.keras").is_file()
    assert set(json.loads((written / "stats.json").read_text())["means"]) == set(NUMERIC)


def test_the_evolutionary_search_and_the_sharded_grid_run_in_the_real_entry_point(tmp_path) -> None:
    """The two strategies keras-tuner's own tuners do not cover, through `python -m include.trainer tune`:
    the evolutionary oracle in keras-tuner's Tuner, and grid search split over 2 shards (no trial twice)."""
    from include.train.backends import run_training_cli

    dataset = _tiny_dataset(tmp_path / "dataset")
    common = ["--dataset", dataset, "--seed", "3", "--epochs", "1", "--ensemble-size", "1"]
    evolved = run_training_cli(["tune", *common, "--out", (tmp_path / "evo").as_uri(), "--tuner", "evolution",
                                "--max-trials", "5"])  # fmt: skip
    assert (evolved["tuner"], evolved["trials"]) == ("evolution", 5)
    trials = pd.read_csv(tmp_path / "evo" / "trials.csv")
    assert len(trials.drop_duplicates(["units", "layers", "dropout", "embedding_dim", "learning_rate"])) == 5
    grids = [run_training_cli(["tune", *common, "--out", (tmp_path / "grid").as_uri(), "--tuner", "grid",
                               "--max-trials", "3", "--shard", str(i), "--shards", "2"]) for i in range(2)]  # fmt: skip
    assert [g["trials"] for g in grids] == [3, 3]
    units = [set(pd.read_csv(tmp_path / "grid" / f"shard_{i}" / "trials.csv")["units"]) for i in range(2)]
    assert units[0].isdisjoint(units[1])  # each shard searched its own share of the grid


def test_warm_start_fine_tunes_the_champions_members_and_competes_with_a_fresh_search(tmp_path) -> None:
    """A champion trained and evaluated through the entry point, then a new night with `--warm-start both`:
    its members are fine-tuned at a tenth of their learning rate (refit on train + validation like fresh
    ones), both groups reach evaluate, the better on the test days is exported, and the loser is recorded."""
    from include.train.backends import run_training_cli

    dataset = _tiny_dataset(tmp_path / "dataset")
    common = ["--dataset", dataset, "--seed", "3"]
    search = ["--tuner", "random", "--max-trials", "1", "--ensemble-size", "1", "--epochs", "2"]
    champion = (tmp_path / "champion").as_uri()
    run_training_cli(["tune", *common, "--out", champion, *search])
    # With the tree member (the form's opt-in): on this tiny dataset its trees separate validation almost
    # perfectly, which once made the calibrator's level shift raise (combine.level_shift).
    first = run_training_cli(["evaluate", *common, "--out", champion, "--tree-member"])
    assert [m["family"] for m in first["member_metrics"]][-1] == "gbdt"
    assert first["tree_member"]["best"]["max_depth"] == TREE_MAX_DEPTH
    assert (first["warm_start"]["competed"], first["warm_start"]["won"]) == (["fresh"], "fresh")  # no champion yet
    tonight = (tmp_path / "tonight").as_uri()
    warm_from = ["--warm-start", "both", "--warm-from", first["saved_model"]]
    tuned = run_training_cli(["tune", *common, "--out", tonight, *search, *warm_from])
    (warm,) = tuned["warm_members"]
    base = json.loads((tmp_path / "champion" / "tune.json").read_text())["members"][0]["hyperparameters"]
    assert warm["learning_rate"] == base["learning_rate"]
    assert warm["fine_tune_learning_rate"] == pytest.approx(base["learning_rate"] / 10)
    assert warm["refit_rows"] == 390  # train + validation
    assert (tmp_path / "tonight" / "member_w0.keras").is_file()
    assert (tmp_path / "tonight" / "member_w0.holdout.keras").is_file()
    assert tuned["trials"] == 1  # `both`: the fresh search ran too
    evaluated = run_training_cli(["evaluate", *common, "--out", tonight, "--tree-member"])
    competition = evaluated["warm_start"]
    assert competition["competed"] == ["champion", "fresh"]
    assert competition["won"] == max(competition["test_auc"], key=competition["test_auc"].get)
    assert evaluated["exported_members"] == (["member_w0.keras"] if competition["won"] == "champion"
                                             else ["member_0.keras"])  # fmt: skip
    assert evaluated["metrics"]["auc"] == pytest.approx(competition["test_auc"][competition["won"]], abs=1e-3)
    # `champion` alone skips the search; a night with no champion yet searches afresh.
    alone = run_training_cli(["tune", *common, "--out", (tmp_path / "alone").as_uri(), *search, "--warm-start",
                              "champion", "--warm-from", first["saved_model"]])  # fmt: skip
    assert (alone["trials"], len(alone["members"]), len(alone["warm_members"])) == (0, 0, 1)
