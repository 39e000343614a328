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
