"""The nightly chain's Deadline Alert reference: "by HH:MM UTC after the night whose data the run processes".

A night is a New York calendar day D; its chain is due at the first `hour:minute` UTC at or after
D ends in New York (the default 06:00 UTC: D+1 06:00 UTC, summer and winter). The night of a run:

* a scheduled (or backfill) run: the night that ends where its data interval ends (the ingest run
  of day D, and the train DAG's 02:00 New York cron run on D+1, are both night D);
* an Asset-triggered run: the latest night of the events it consumes. A `features` event names it
  (`last_day`); any other event (`model_candidate`, `retrain_requested`) inherits the night of the
  run that emitted it, so deploy and monitor follow the ingest that started the chain;
* a manual run, or one whose night cannot be told: none; it is due at the first cutoff after it
  was queued, as before.

A run queued after its night's cutoff is already late, and its alert fires at once: the train run
queued at 06:05 UTC for night D is due D+1 06:00 UTC, five minutes ago, not D+2 06:00 UTC. Two
exceptions keep re-runs from paging: a night whose chain this DAG already finished gets no second
deadline, and a night whose cutoff was more than a day before the run was queued (a backfill, a
re-ingest of old days) gets none; tonight's own run carries tonight's deadline.

Airflow 3.3 evaluates a run's deadline references once, when the scheduler (or the API, or the
CLI) creates the run, before the run's consumed Asset events are attached; so the events are read
as the scheduler chooses them. A custom reference must be registered by a plugin in every one of
those processes, and be imported by DAGs under this same module name (`nightshift_deadlines`), so
the class path stored with the DAG matches the registered one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseDeadlineReference

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
NEW_YORK = ZoneInfo("America/New_York")
# deploy <- train <- ingest: how many emitting runs an event's night is looked up through.
SOURCE_DEPTH = 3
# The successful runs of a DAG looked at to tell whether a night's chain already finished.
RECENT_RUNS = 20


@dataclass
class DailyUtcDeadline(BaseDeadlineReference):
    """The first `hour:minute` UTC after the New York night whose data the run processes (module docstring)."""

    hour: int = 6
    minute: int = 0
    required_kwargs = {"dag_id", "run_id"}  # noqa: RUF012 (class attribute read by Airflow, not a field)

    def serialize_reference(self) -> dict:
        return {"reference_type": self.reference_name, "hour": self.hour, "minute": self.minute}

    @classmethod
    def deserialize_reference(cls, data: dict) -> DailyUtcDeadline:
        return cls(hour=int(data.get("hour", 6)), minute=int(data.get("minute", 0)))

    def deadline_for(self, night: date | None, queued: datetime, night_done: bool = False) -> datetime | None:
        """The deadline of a run of `night` (None: unknown) queued at `queued`; None means no deadline."""
        if night is None:
            return next_cutoff(queued, self.hour, self.minute)
        due = night_cutoff(night, self.hour, self.minute)
        if queued >= due + timedelta(days=1) or (night_done and queued > due):
            return None
        return due

    def _evaluate_with(self, *, session: Session, dag_id: str, run_id: str, **kwargs: Any) -> datetime | None:
        from airflow.models import DagRun
        from sqlalchemy import select

        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        queued = run.queued_at or run.run_after
        try:
            with read_savepoint(session):
                nights = _Nights(session)
                night = nights.of(run, being_created=True)
                done = night is not None and nights.done(dag_id, night, run_id)
        except Exception:
            log.exception("no night found for %s %s; due at the next cutoff after queuing", dag_id, run_id)
            night, done = None, False
        return self.deadline_for(night, queued, done)


@dataclass
class RunQueuedAt(BaseDeadlineReference):
    """When the run was queued: Airflow's own DAGRUN_QUEUED_AT, under another name. Airflow 3.3.2
    cannot clear a run that carries an unmissed DAGRUN_QUEUED_AT deadline: `clear_task_instances`
    recalculates it with `timedelta(seconds=<the stored interval>)`, and the stored interval is a dict,
    so the clear fails with HTTP 500 and on-call cannot re-run an ingest (seen with the nights
    harness's `landing` fault). A deadline on this reference is not recalculated by a clear; it
    stays due at the first queuing, which is when the night's data was expected. A backfill run gets
    none: a backfill queues all its nights at once, so its later nights would page for waiting their
    turn (re-runs of old nights get no chain deadline either)."""

    required_kwargs = {"dag_id", "run_id"}  # noqa: RUF012 (class attribute read by Airflow, not a field)

    def serialize_reference(self) -> dict:
        return {"reference_type": self.reference_name}

    @classmethod
    def deserialize_reference(cls, data: dict) -> RunQueuedAt:
        return cls()

    def _evaluate_with(self, *, session: Session, dag_id: str, run_id: str, **kwargs: Any) -> datetime | None:
        from airflow.models import DagRun
        from airflow.utils.types import DagRunType
        from sqlalchemy import select

        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None or run.run_type == DagRunType.BACKFILL_JOB:
            return None
        return run.queued_at or run.run_after


@contextmanager
def read_savepoint(session: Session) -> Iterator[None]:
    """Reads that cannot abort the caller's transaction: whatever goes wrong inside rolls back to a
    savepoint, and the scheduler's transaction, with the run it is creating, goes on.

    A savepoint of the connection, not the ORM's `session.begin_nested()`: the scheduler creates runs
    under `prohibit_commit`, which refuses the ORM savepoint's release as an "UNEXPECTED COMMIT", so
    every run the scheduler created got the fallback deadline. Nothing is flushed inside (the reads
    must not write the caller's pending objects into a savepoint that may be rolled back)."""
    with session.no_autoflush:
        savepoint = session.connection().begin_nested()
        try:
            yield
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.commit()


def next_cutoff(instant: datetime, hour: int, minute: int) -> datetime:
    """The first `hour:minute` UTC at or after `instant`."""
    instant = instant.astimezone(UTC)
    cutoff = datetime.combine(instant.date(), time(hour, minute), tzinfo=UTC)
    return cutoff if cutoff >= instant else cutoff + timedelta(days=1)


def night_end(night: date) -> datetime:
    """Where the New York day `night` ends, in UTC (04:00 or 05:00 UTC the next day)."""
    return datetime.combine(night + timedelta(days=1), time(0), tzinfo=NEW_YORK).astimezone(UTC)


def night_cutoff(night: date, hour: int, minute: int) -> datetime:
    """When the chain of `night` is due: the first `hour:minute` UTC at or after the night ends."""
    return next_cutoff(night_end(night), hour, minute)


def interval_night(data_interval_end: datetime) -> date:
    """The night a scheduled run processes: the New York day that ended last at or before its interval's end."""
    return data_interval_end.astimezone(NEW_YORK).date() - timedelta(days=1)


def event_night(extra: dict[str, Any] | None) -> date | None:
    """The night an Asset event names (the ingest's `features` event: its wall-clock `night`, which
    differs from `last_day` under the replay clock, else `last_day`), if any."""
    extra = extra or {}
    try:
        return date.fromisoformat(str(extra.get("night") or extra["last_day"]))
    except (KeyError, ValueError):
        return None


def latest(nights: Iterable[date | None]) -> date | None:
    known = [n for n in nights if n is not None]
    return max(known) if known else None


class _Nights:
    """Reads the metadata database, in the scheduler's session, to tell the night of a run."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def of(self, run: Any, being_created: bool = False, depth: int = SOURCE_DEPTH) -> date | None:
        from airflow.utils.types import DagRunType

        if run.run_type == DagRunType.ASSET_TRIGGERED:
            events = self._events_to_consume(run) if being_created else self._consumed_events(run)
            return latest(self._night_of_event(event, depth) for event in events)
        if run.run_type in (DagRunType.SCHEDULED, DagRunType.BACKFILL_JOB) and run.data_interval_end is not None:
            return interval_night(run.data_interval_end)
        return None

    def done(self, dag_id: str, night: date, run_id: str) -> bool:
        """Whether a successful run of `dag_id` (not `run_id`) already processed `night`."""
        from airflow.models import DagRun
        from airflow.utils.state import DagRunState
        from sqlalchemy import select

        runs = self.session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.run_id != run_id, DagRun.state == DagRunState.SUCCESS,
                   DagRun.run_after >= night_end(night) - timedelta(days=1))
            .order_by(DagRun.run_after.desc())
            .limit(RECENT_RUNS)
        )  # fmt: skip
        return any(self.of(r) == night for r in runs)

    def _night_of_event(self, event: Any, depth: int) -> date | None:
        night = event_night(event.extra)
        if night is not None or depth <= 0 or not (event.source_dag_id and event.source_run_id):
            return night
        from airflow.models import DagRun
        from sqlalchemy import select

        source = self.session.scalar(
            select(DagRun).where(DagRun.dag_id == event.source_dag_id, DagRun.run_id == event.source_run_id)
        )
        return None if source is None else self.of(source, depth=depth - 1)

    def _consumed_events(self, run: Any) -> list:
        from airflow.models import DagRun
        from airflow.models.asset import AssetEvent
        from sqlalchemy import select

        return list(self.session.scalars(select(AssetEvent).where(AssetEvent.created_dagruns.any(DagRun.id == run.id))))

    def _events_to_consume(self, run: Any) -> list:
        """The events a run being created will consume, chosen as the scheduler chooses them: those on the
        DAG's assets since its previous Asset-triggered run (Airflow attaches them after the deadlines)."""
        from airflow.models import DagRun
        from airflow.models.asset import AssetEvent, DagScheduleAssetReference
        from airflow.utils.types import DagRunType
        from sqlalchemy import func, select

        previous = self.session.scalar(
            select(func.max(DagRun.run_after)).where(
                DagRun.dag_id == run.dag_id,
                DagRun.run_type == DagRunType.ASSET_TRIGGERED,
                DagRun.run_after < run.run_after,
            )
        )
        floor = previous or run.run_after - timedelta(days=2)
        assets = select(DagScheduleAssetReference.asset_id).where(DagScheduleAssetReference.dag_id == run.dag_id)
        return list(
            self.session.scalars(
                select(AssetEvent).where(
                    AssetEvent.asset_id.in_(assets),
                    AssetEvent.timestamp <= run.run_after,
                    AssetEvent.timestamp > floor,
                )
            )
        )


class NightshiftDeadlinesPlugin(AirflowPlugin):
    name = "nightshift_deadlines"
    deadline_references = [DailyUtcDeadline, RunQueuedAt]  # noqa: RUF012
