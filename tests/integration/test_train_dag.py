"""The train DAG end to end with the local backend, and behavioural tests of the model it makes.

The `trained` fixture (conftest.py) ingests June–July 2013, then trains on 44 days, validates on 7
and tests on the last 10, with a small budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from include import db
from include.contract.features import MODEL_FEATURES
from tests.integration.conftest import CONF, END, START

pytestmark = pytest.mark.integration


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_registry_row_has_status_checks_and_lineage(trained, db_url) -> None:
    _, row, states = trained
    assert row["status"] in ("blessed", "rejected")
    assert states["publish_candidate"] == ("success" if row["status"] == "blessed" else "skipped")
    assert row["data_window"]["end"] == END.isoformat()
    assert row["data_window"]["start"] == START.isoformat()
    assert row["feature_service"] == "flight_delay_v1"
    assert row["feast_registry_version"].startswith("flight_delay_v1@")
    assert len(row["dataset_sha256"]) == 64
    assert row["ingestion_run_ids"]
    assert row["validation_run_ids"]
    assert row["params"]["tuner"] == "random"
    assert len(row["hyperparameters"]["members"]) == 2
    assert row["gate_note"].endswith("first model: no champion, value and sanity thresholds only")
    assert _local(row["report_uri"]).exists()
    from include.db import gate_checks

    with db.engine(db_url).connect() as conn:
        checks = conn.execute(sa.select(gate_checks).where(gate_checks.c.version == row["version"])).mappings().all()
    assert {c["name"] for c in checks} >= {"auc_floor", "ece_ceiling", "finite_predictions", "champion"}
    assert all(c["detail"] for c in checks)


def test_the_runs_form_values_are_recorded_with_what_it_produced(trained, db_url) -> None:
    from include.core.lineage import get_run

    run, row, _ = trained
    recorded = get_run(db_url, "nightshift_train", run.run_id)
    assert recorded["conf"] == CONF
    assert recorded["params"] == CONF
    assert recorded["run_type"] == "manual"
    assert recorded["run_after"] is not None
    assert row["run_id"] == recorded["run_id"]  # the version it produced joins on the run
    ingested = [get_run(db_url, "nightshift_ingest", r) for r in row["ingestion_run_ids"]]
    assert all(r is not None and r["params"]["end_date"] == END.isoformat() for r in ingested)


@pytest.fixture(scope="module")
def serving(trained):
    import tensorflow as tf

    _, row, _ = trained
    return tf.saved_model.load(str(_local(row["artifact_uri"]))).signatures["serving_default"]


@pytest.fixture(scope="module")
def test_split(trained):
    import pandas as pd

    _, row, _ = trained
    return pd.read_parquet(_local(row["dataset_uri"]) / "test.parquet")


def _predict(signature, frame) -> np.ndarray:
    import tensorflow as tf

    from include.contract.inputs import to_model_inputs

    outputs = signature(**{k: tf.constant(v) for k, v in to_model_inputs(frame).items()})
    return next(iter(outputs.values())).numpy().reshape(-1)


def test_saved_model_signature_takes_exactly_the_raw_features(serving) -> None:
    inputs = serving.structured_input_signature[1]
    assert sorted(inputs) == sorted(MODEL_FEATURES)
    assert {spec.dtype.name for name, spec in inputs.items() if name in ("carrier", "origin")} == {"string"}


def test_export_matches_the_in_memory_ensemble(trained) -> None:
    _, row, _ = trained
    evaluated = json.loads((_local(row["artifact_uri"]).parent / "evaluate.json").read_text())
    assert evaluated["export_parity_max_abs_diff"] <= 1e-5
    assert evaluated["metrics"]["auc"] == pytest.approx(row["metrics"]["auc"])


def test_minimum_functionality_auc_above_06(trained, serving, test_split) -> None:
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(test_split["is_delayed"], _predict(serving, test_split))
    assert auc > 0.6
    assert auc == pytest.approx(trained[1]["metrics"]["auc"], abs=1e-6)


def test_invariance_to_fields_the_model_must_not_use(serving, test_split) -> None:
    shuffled = test_split.copy()
    shuffled["flight"] = shuffled["flight"].sample(frac=1.0, random_state=0).to_numpy()
    shuffled["dep_delay"] = 999.0  # a post-departure column, present or not, must not matter
    np.testing.assert_array_equal(_predict(serving, test_split), _predict(serving, shuffled))


def test_worse_origin_weather_does_not_lower_predicted_risk(serving, test_split) -> None:
    stormy = test_split.copy()
    stormy["precip"] = stormy["precip"].fillna(0) + 0.5
    stormy["visib"] = 0.5
    stormy["wind_speed"] = stormy["wind_speed"].fillna(0) + 20
    assert _predict(serving, stormy).mean() >= _predict(serving, test_split).mean()


def test_same_data_and_seed_give_the_same_metrics(trained, tmp_path) -> None:
    from include.train.backends import run_training_cli

    _, row, _ = trained
    first = json.loads((_local(row["artifact_uri"]).parent / "tune.json").read_text())
    again = run_training_cli([
        "tune", "--dataset", row["dataset_uri"], "--out", (tmp_path / "again").as_uri(), "--seed", str(CONF["seed"]),
        "--tuner", CONF["tuner"], "--max-trials", str(CONF["max_trials"]), "--epochs", str(CONF["epochs"]),
        "--ensemble-size", str(CONF["ensemble_size"]),
    ])  # fmt: skip
    assert [m["hyperparameters"] for m in again["members"]] == [m["hyperparameters"] for m in first["members"]]
    assert [m["val_auc"] for m in again["members"]] == [m["val_auc"] for m in first["members"]]
