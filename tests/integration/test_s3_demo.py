"""The whole chain on an `s3://` lake: `bin/nightshift demo` (ingest → train → deploy → monitor → the
prediction service) against an S3-compatible endpoint (moto in server mode), run as a user runs it,
and once more on a `file://` lake with the same seed and budget. The two summaries must be equal.

On S3 the lake is reached through an Airflow AWS connection (`NIGHTSHIFT_LAKE_CONN_ID`), Feast's DuckDB
offline store reads the features through that connection's fsspec filesystem (nothing is downloaded),
the trainer subprocess gets its credentials, and serving reads its base path from the bucket.

Each run has a state folder of its own (its own embedded Postgres, Airflow and serving), and the small
budget of the nights test (`tests/factories.py`, SMALL_CHAIN). Both run at once, in the module fixture:
the summaries must be equal all the same (training is seeded and deterministic), and the wait is shorter
(the fixture took 348 s at once, 637 s one after the other; 2026-12-07, 2 cores). `make bench-s3` times
them one after the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.s3_demo import both_lakes
from tests.factories import SMALL_CHAIN
from tests.s3_fixtures import BUCKET

ROOT = Path(__file__).resolve().parents[2]
LAKE = f"s3://{BUCKET}/lake"
RUN_LIMIT_S = 20 * 60  # one after the other, 338 s on S3 and 252 s on the file lake (2026-12-07)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(45 * 60)]


@pytest.fixture(scope="module")
def runs():
    # Not under pytest's 0700 tmp: each run's embedded Postgres runs as an unprivileged user.
    base = ROOT / ".local" / "test-s3-demo"
    done = both_lakes(base, SMALL_CHAIN, RUN_LIMIT_S, at_once=True)  # times: make bench-s3, one after the other
    (base / "timing.json").write_text(json.dumps(done["timing"]) + "\n")
    return {**done, "base": base}


def test_the_whole_chain_runs_on_an_s3_lake(runs) -> None:
    done = runs["s3"]
    assert done["returncode"] == 0, done["output"]
    summary = done["summary"]
    assert set(summary["dag_runs"].values()) == {"success"}, summary["dag_runs"]
    assert summary["train"]["status"] == "blessed"
    assert summary["train"]["report"].startswith(f"{LAKE}/")
    assert summary["deploy"]["stable_version"] == summary["train"]["version"]
    assert summary["monitor"]["days"] == 7
    assert summary["monitor"]["report"].startswith(f"{LAKE}/reports/drift/")
    assert len(summary["predict"]["online_predictions"]) == 3
    assert summary["predict"]["parity_max_abs_diff"] <= 1e-4


def test_every_stage_wrote_to_the_bucket_and_nothing_to_a_local_lake(runs) -> None:
    stored, version = runs["keys"], runs["s3"]["summary"]["train"]["version"]
    prefixes = ["lake/raw/flights/", "lake/clean/flights/", "lake/features/", "lake/reports/validation/",
                "lake/datasets/", "lake/models/", f"lake/deployments/flight_delay/{version}/", "lake/predictions/",
                "lake/reports/drift/", f"lake/serving/flight_delay/{version}/"]  # fmt: skip
    missing = [p for p in prefixes if not any(k.startswith(p) for k in stored)]
    assert missing == [], f"nothing under {missing} in the bucket"
    assert f"lake/serving/flight_delay/{version}/saved_model.pb" in stored
    assert any(k.startswith("lake/models/") and k.endswith("/saved_model.pb") for k in stored)
    assert not (runs["base"] / "s3" / "lake").exists(), "a file lake was written beside the s3 one"
    config = (runs["base"] / "s3" / "serving" / "models.config").read_text()
    assert f'base_path: "{LAKE}/serving/flight_delay"' in config


def test_the_s3_run_gives_the_file_lake_runs_summary(runs) -> None:
    assert runs["file"]["returncode"] == 0, runs["file"]["output"]
    assert runs["timing"]["differences"] == []
    assert runs["timing"]["summaries_equal"] is True
