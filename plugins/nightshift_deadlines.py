"""A Deadline Alert reference for "by HH:MM UTC": the first such time after the run was queued.

Airflow 3.3 evaluates a run's deadline references once, when the scheduler (or the API, or the
CLI) creates the run. A custom reference must be registered by a plugin in every one of those
processes, and be imported by DAGs under this same module name (`nightshift_deadlines`), so the
class path stored with the DAG matches the registered one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseDeadlineReference


@dataclass
class DailyUtcDeadline(BaseDeadlineReference):
    """The next `hour:minute` UTC at or after the run's `queued_at` (the nightly chain's cut-off)."""

    hour: int = 6
    minute: int = 0
    required_kwargs = {"dag_id", "run_id"}  # noqa: RUF012 (class attribute read by Airflow, not a field)

    def serialize_reference(self) -> dict:
        return {"reference_type": self.reference_name, "hour": self.hour, "minute": self.minute}

    @classmethod
    def deserialize_reference(cls, data: dict) -> DailyUtcDeadline:
        return cls(hour=int(data.get("hour", 6)), minute=int(data.get("minute", 0)))

    def _evaluate_with(self, *, session, dag_id: str, run_id: str, **kwargs) -> datetime | None:
        from airflow.models import DagRun
        from sqlalchemy import select

        queued = session.scalar(select(DagRun.queued_at).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        return None if queued is None else next_cutoff(queued, self.hour, self.minute)


def next_cutoff(queued: datetime, hour: int, minute: int) -> datetime:
    """The first `hour:minute` UTC at or after `queued`."""
    queued = queued.astimezone(UTC)
    cutoff = datetime.combine(queued.date(), time(hour, minute), tzinfo=UTC)
    return cutoff if cutoff >= queued else cutoff + timedelta(days=1)


class NightshiftDeadlinesPlugin(AirflowPlugin):
    name = "nightshift_deadlines"
    deadline_references = [DailyUtcDeadline]  # noqa: RUF012
