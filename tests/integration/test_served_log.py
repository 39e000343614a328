"""The served-prediction log under faults: Postgres away at a flush, then back; more rows waiting than its
cap. Nothing is lost or doubled, and what it could not keep is counted (and exported to Prometheus)."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from include import db
from include.core import lake
from include.predict import served
from include.predict.app import Metrics
from include.predict.served import ServedLog, served_counts, served_dir

DAY = dt.date(2012, 12, 31)  # a flight day no other test serves


def _rows(n: int, arm: str = "stable") -> list[dict]:
    return [{"request_id": f"r{i}", "flight_key": f"2012-12-31/UA/{i}/EWR", "flight_date": DAY, "model_version": 7,
             "arm": arm, "p_delayed": 0.25, "error": None} for i in range(n)]  # fmt: skip


@pytest.fixture
def log_root(settings, db_url) -> Iterator:
    root = lake.lake_root(settings)
    yield root
    with db.engine(db_url).begin() as conn:
        conn.execute(sa.delete(db.served_batches).where(db.served_batches.c.flight_date == DAY))
    folder = served_dir(root, DAY)
    if folder.exists():
        for path in folder.iterdir():
            path.unlink()


@pytest.fixture
def postgres_away() -> Iterator[str]:
    """A Postgres URL where nothing listens (the port stays bound, so nothing else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/nightshift?connect_timeout=2"


def test_a_flush_while_postgres_is_away_is_kept_and_written_once_when_it_returns(log_root, db_url, postgres_away):
    log = ServedLog(log_root, postgres_away, batch_rows=1000, flush_s=60)
    metrics = Metrics()
    metrics.watch(log)
    log.add(_rows(30) + _rows(5, arm="canary"))
    assert log.flush() == 0
    assert log.failed_flushes == 1
    assert log.pending_rows() == 35
    assert metrics.registry.get_sample_value("nightshift_predict_log_pending_rows") == 35
    assert metrics.registry.get_sample_value("nightshift_predict_log_failed_flushes") == 1
    log.url = db_url  # Postgres is back
    log.add(_rows(10))
    assert log.flush() == 45
    assert log.flush() == 0
    assert log.pending_rows() == 0
    counts = {r["arm"]: r["rows"] for r in served_counts(db_url, DAY)}
    assert counts == {"stable": 40, "canary": 5}
    # One file per recorded batch: the batch written to the lake before Postgres refused was rewritten
    # under the same name, not written twice.
    with db.engine(db_url).connect() as conn:
        uris = set(conn.execute(sa.select(db.served_batches.c.uri).where(db.served_batches.c.flight_date == DAY))
                   .scalars())  # fmt: skip
    files = {lake.uri(p) for p in served_dir(log_root, DAY).iterdir()}
    assert files == uris
    assert sum(len(lake.read_parquet(p)) for p in served_dir(log_root, DAY).iterdir()) == 45


def test_past_its_cap_the_log_drops_the_oldest_and_counts_them(log_root, postgres_away, monkeypatch):
    monkeypatch.setattr(served, "MAX_PENDING_ROWS", 50)
    log = ServedLog(log_root, postgres_away, batch_rows=1000, flush_s=60)
    metrics = Metrics()
    metrics.watch(log)
    for _ in range(3):
        log.add(_rows(30))
        log.flush()
    assert log.dropped == 60
    assert log.pending_rows() == 30
    assert metrics.registry.get_sample_value("nightshift_predict_log_dropped_rows") == 60
