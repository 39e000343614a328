"""The same collect → clean → validate code against an `s3://` lake.

An S3-compatible endpoint (moto in server mode) runs on localhost for the test; the lake is
reached through an Airflow AWS connection, exactly as production would reach S3.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include import db
from tests.s3_fixtures import BUCKET, connection_env, keys, moto_endpoint

pytestmark = pytest.mark.integration

CONN_ID = "test_s3_lake"
DAYS = [dt.date(2013, 6, 10), dt.date(2013, 6, 11)]


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_endpoint() as endpoint:
        yield endpoint.url, endpoint.client


@pytest.fixture
def s3_settings(s3_endpoint, monkeypatch):
    from include.core.config import load_settings

    endpoint, _ = s3_endpoint
    for name, value in connection_env(CONN_ID, endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NIGHTSHIFT_LAKE", f"s3://{BUCKET}/lake")
    monkeypatch.setenv("NIGHTSHIFT_LAKE_CONN_ID", CONN_ID)
    return load_settings()


def test_collect_clean_validate_on_an_s3_lake(s3_settings, s3_endpoint, db_url) -> None:
    from include.core.lake import lake_root
    from include.ingest import steps as ingest

    _, client = s3_endpoint
    assert lake_root(s3_settings).protocol == "s3"
    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    collected = ingest.collect(s3_settings, DAYS, "s3_test", now)
    cleaned = ingest.clean(s3_settings, DAYS, "s3_test", now)
    validated = ingest.validate(s3_settings, DAYS, "s3_test", now)
    assert collected["rows_raw"] == cleaned["rows_raw"] > 1500
    assert cleaned["rows_clean"] + cleaned["rows_quarantined"] == cleaned["rows_raw"]
    assert validated["success"]
    assert validated["data_docs"].startswith(f"s3://{BUCKET}/lake/reports/data_docs/")

    stored = keys(client)
    for day in DAYS:
        for zone, dataset in [("raw", "flights"), ("raw", "weather"), ("clean", "flights"), ("quarantine", "flights")]:
            assert f"lake/{zone}/{dataset}/date={day}/part-0.parquet" in stored
        assert f"lake/reports/validation/flights_clean/date={day}/result.json" in stored
    assert not [k for k in stored if k.rsplit("/", 1)[-1].startswith(".")], "staging objects left behind"

    with db.engine(db_url).connect() as conn:
        rows = (
            conn.execute(
                sa.select(db.partitions.c.uri).where(
                    db.partitions.c.run_id == "s3_test", db.partitions.c.dataset == "clean/flights"
                )
            )
            .scalars()
            .all()
        )
        results = (
            conn.execute(sa.select(db.validation_results.c.success).where(db.validation_results.c.run_id == "s3_test"))
            .scalars()
            .all()
        )
    assert sorted(rows) == [f"s3://{BUCKET}/lake/clean/flights/date={d}/part-0.parquet" for d in DAYS]
    assert results == [True] * 4
