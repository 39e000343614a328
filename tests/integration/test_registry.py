"""The model registry on Postgres: a retried registration reuses its version; the lifecycle refuses bad moves;
the gate records the content hash of the SavedModel it blessed."""

from __future__ import annotations

import datetime as dt

import pytest


def test_registry_status_transitions(db_url) -> None:
    from include.train.registry import TransitionError, get_version, register_candidate, set_status

    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    record = {
        "dag_id": "t", "run_id": "unit_registry", "code_version": "x", "artifact_uri": "file:///m",
        "dataset_uri": "file:///d", "dataset_sha256": "0" * 64, "data_window": {}, "feature_service": "f",
        "feast_registry_version": "v", "ingestion_run_ids": [], "validation_run_ids": [], "metrics": {},
        "hyperparameters": {}, "params": {},
    }  # fmt: skip
    version = register_candidate(db_url, record, now)
    assert register_candidate(db_url, record, now) == version  # a retried task reuses its version
    later = register_candidate(db_url, {**record, "run_id": "unit_registry_2"}, now)
    assert later > version
    set_status(db_url, version, "rejected", now)
    with pytest.raises(TransitionError, match="rejected; it cannot become production"):
        set_status(db_url, version, "production", now)
    set_status(db_url, later, "blessed", now, note="ok")
    assert get_version(db_url, later)["status"] == "blessed"
    with pytest.raises(TransitionError, match="blessed; it cannot become production"):  # never served: no rollback
        set_status(db_url, later, "production", now)
    assert get_version(db_url, later)["status"] == "blessed"


def test_the_gate_records_the_hash_of_what_it_blessed(trained) -> None:
    from pathlib import Path

    from include.train.gate import saved_model_sha256

    _, row, _ = trained
    export = Path(row["artifact_uri"].removeprefix("file://"))
    assert row["status"] == "blessed"
    assert row["artifact_sha256"] == saved_model_sha256(export)
    assert len(row["artifact_sha256"]) == 64
