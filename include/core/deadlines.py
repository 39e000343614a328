"""Deadline Alerts (Airflow 3's replacement for SLAs) of nightshift's DAGs, and their callback.

* The nightly chain (train, deploy, monitor) must finish by `NIGHTSHIFT_CHAIN_DEADLINE_UTC`
  (default 06:00 UTC) after the New York night whose data the run processes, not after it was
  queued: a `DailyUtcDeadline` reference from `plugins/nightshift_deadlines.py` (its docstring says
  how a run's night is told). A run queued at 06:05 UTC for night D is due D+1 06:00 UTC, so its
  alert fires at once.
* Ingest must finish within `NIGHTSHIFT_INGEST_DEADLINE_HOURS` (default 2) of being queued.

The callback is an `AsyncCallback`, so it runs in the triggerer whatever the executor; it sends
one alert through `include.core.alerts` (mail, webhook, Postgres).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta
from typing import Any

from include.core.config import chain_cutoff, deadlines_enabled, ingest_deadline_hours

log = logging.getLogger("nightshift.deadlines")


def nightly_deadlines(what: str) -> list:
    """The chain's "done by 06:00 UTC after the night" alert for a DAG of the nightly chain (cheap: parse time)."""
    if not deadlines_enabled():
        return []
    from airflow.sdk import AsyncCallback, DeadlineAlert
    from nightshift_deadlines import DailyUtcDeadline

    hour, minute = chain_cutoff()
    due = f"{what} by {hour:02d}:{minute:02d} UTC after its night"
    return [DeadlineAlert(
        reference=DailyUtcDeadline(hour=hour, minute=minute), interval=timedelta(0),
        callback=AsyncCallback(deadline_missed, kwargs={"what": due}),
        name="nightly_chain_by_cutoff",
    )]  # fmt: skip


def ingest_deadlines() -> list:
    if not deadlines_enabled():
        return []
    from airflow.sdk import AsyncCallback, DeadlineAlert
    from nightshift_deadlines import RunQueuedAt

    hours = ingest_deadline_hours()
    return [DeadlineAlert(
        reference=RunQueuedAt(), interval=timedelta(hours=hours),
        callback=AsyncCallback(deadline_missed, kwargs={"what": f"ingest must finish within {hours:g} h of queuing"}),
        name="ingest_within_hours_of_queued",
    )]  # fmt: skip


def deadline_alert(context: dict[str, Any], what: str):
    from include.core.alerts import Alert

    run = context.get("dag_run") or {}
    dag_id, run_id = run.get("dag_id", "?"), run.get("dag_run_id") or run.get("run_id", "?")
    due = (context.get("deadline") or {}).get("deadline_time")
    base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")
    from urllib.parse import quote

    return Alert(
        kind="deadline_missed", key=f"{dag_id}:{run_id}:{what}", severity="critical",
        title=f"{dag_id} missed its deadline: {what}",
        impact="the nightly chain is late: tonight's model or monitoring may not be ready when users need it",
        details=[f"run {run_id} was due by {due}", f"state when the deadline passed: {run.get('state', '?')}",
                 f"queued at {run.get('queued_at')}, started at {run.get('start_date')}"],
        next_step="open the run: find the slow or stuck task (queued? up_for_retry? waiting for a pool?)",
        link=f"{base}/dags/{dag_id}/runs/{quote(str(run_id), safe='')}", dag_id=dag_id, run_id=run_id,
    )  # fmt: skip


async def deadline_missed(context: dict[str, Any], what: str = "deadline", **kwargs: Any) -> None:
    """AsyncCallback of every nightshift Deadline Alert (runs in the triggerer)."""
    from include.core.alerts import send
    from include.core.config import load_settings

    alert = deadline_alert(context, what)
    log.error("DEADLINE MISSED: %s", alert.title)
    await asyncio.to_thread(send, load_settings().require_database_url(), alert)
