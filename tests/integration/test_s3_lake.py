"""The same collect → clean → validate code against an `s3://` lake.

An S3-compatible endpoint (moto in server mode) runs on localhost for the test; the lake is
reached through an Airflow AWS connection, exactly as production would reach S3.
"""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest
import sqlalchemy as sa

from include import db

pytestmark = pytest.mark.integration

BUCKET = "nightshift-lake"
CONN_ID = "test_s3_lake"
DAYS = [dt.date(2013, 6, 10), dt.date(2013, 6, 11)]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)  # the server binds a free port itself
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint, monkeypatch):
    from include.core.config import load_settings

    endpoint, _ = s3_endpoint
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        ),
    )
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

    keys = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    for day in DAYS:
        for zone, dataset in [("raw", "flights"), ("raw", "weather"), ("clean", "flights"), ("quarantine", "flights")]:
            assert f"lake/{zone}/{dataset}/date={day}/part-0.parquet" in keys
        assert f"lake/reports/validation/flights_clean/date={day}/result.json" in keys
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(".")], "staging objects left behind"

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
