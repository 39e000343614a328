"""The chain's deadline reference as the scheduler evaluates it: inside the scheduler's transaction, on
the metadata database, under Airflow's own `prohibit_commit` guard (which the scheduler holds while it
creates runs). The unit tests in tests/unit/test_deadlines.py cover the arithmetic without a database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import airflow.settings  # noqa: F401 (puts [core] plugins_folder on sys.path, as in every Airflow process)
import pytest
import sqlalchemy as sa
from airflow.models import DagRun
from airflow.utils.sqlalchemy import prohibit_commit
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunType
from nightshift_deadlines import DailyUtcDeadline, _Nights
from sqlalchemy.orm import Session

from include.db import sqlalchemy_url

UTC = dt.UTC
# The ingest run of New York night 2026-12-01: its data interval ends at midnight New York (05:00 UTC).
INTERVAL = (dt.datetime(2026, 12, 1, 5, tzinfo=UTC), dt.datetime(2026, 12, 2, 5, tzinfo=UTC))
QUEUED = dt.datetime(2026, 12, 2, 7, tzinfo=UTC)  # an hour after the night's 06:00 UTC cutoff: late already
NIGHT_DUE = dt.datetime(2026, 12, 2, 6, tzinfo=UTC)
FALLBACK = dt.datetime(2026, 12, 3, 6, tzinfo=UTC)  # the next cutoff after queuing, for a run of no night


@pytest.fixture
def scheduler_session(db_url) -> Iterator[tuple[Session, DagRun]]:
    """A session holding a run being created, as the scheduler's is; rolled back afterwards."""
    engine = sa.create_engine(sqlalchemy_url(db_url), poolclass=sa.pool.NullPool)
    session = Session(engine)
    run = DagRun(dag_id="t_deadline_reference", run_id="scheduled__2026-12-01", run_type=DagRunType.SCHEDULED,
                 logical_date=INTERVAL[0], data_interval=INTERVAL, run_after=INTERVAL[1], queued_at=QUEUED,
                 state=DagRunState.QUEUED)  # fmt: skip
    session.add(run)
    session.flush()
    try:
        yield session, run
    finally:
        session.rollback()
        session.close()
        engine.dispose()


def test_under_the_schedulers_commit_guard_a_run_gets_its_nights_deadline(scheduler_session) -> None:
    session, run = scheduler_session
    with prohibit_commit(session):
        due = DailyUtcDeadline()._evaluate_with(session=session, dag_id=run.dag_id, run_id=run.run_id)
    # With the ORM savepoint, the guard refused its release and every run fell back to FALLBACK.
    assert due == NIGHT_DUE


def test_a_failing_read_falls_back_and_leaves_the_schedulers_transaction_usable(scheduler_session,
                                                                                 monkeypatch) -> None:  # fmt: skip
    session, run = scheduler_session

    def broken(self, *args, **kwargs):
        self.session.execute(sa.text("SELECT no_such_column FROM dag_run"))

    monkeypatch.setattr(_Nights, "done", broken)
    with prohibit_commit(session):
        due = DailyUtcDeadline()._evaluate_with(session=session, dag_id=run.dag_id, run_id=run.run_id)
        # The error aborted only the savepoint: the transaction goes on, and the run is still in it.
        found = session.scalar(sa.select(DagRun.queued_at).where(DagRun.run_id == run.run_id))
    assert due == FALLBACK
    assert found == QUEUED
