"""Batch prediction for analysts: score a day's scheduled flights with the `stable` model.

From the form: a date (empty: tomorrow, the day after the latest ingested), and optionally a file of
scheduled flights an upstream system dropped under `{lake}/landing/scheduled/` (its name only). Without a
file, the flights are the replay's for that day, with no label and no post-departure column.

* **flights** reads the schedule;
* **score** looks up each flight's features in Feast's online store and scores them through serving's
  REST API in batches, with the version `stable` points at (no TensorFlow in the worker), and writes
  `{lake}/predictions/scheduled/date=…/part-0.parquet` with that version. A rerun replaces it.

The ML Ops view lists the outputs, with a CSV download.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from include.core.access import access_control
from include.core.assets import PREDICT_BATCH_DAG
from include.core.dag_defaults import default_args

DEFAULT_ARGS = default_args(
    retry_delay=timedelta(seconds=30), max_retry_delay=timedelta(minutes=5), dag_id=PREDICT_BATCH_DAG
)


@dag(
    dag_id=PREDICT_BATCH_DAG,
    access_control=access_control(PREDICT_BATCH_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=2,
    default_args=DEFAULT_ARGS,
    tags=["nightshift", "predict"],
    params={
        "date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Day of the flights",
            description="YYYY-MM-DD. Empty: tomorrow (the day after the latest ingested).",
            section="Scheduled flights",
        ),
        "landing_file": Param(
            None,
            type=["null", "string"],
            title="Landing file",
            description="Optional: the name of a CSV or Parquet file under the lake's "
            "landing/scheduled/ (columns carrier, flight, origin, dest, tailnum, sched_dep_time, "
            "sched_arr_time). Empty: the replay's flights of the day.",
            section="Scheduled flights",
        ),
    },
)
def nightshift_predict_batch() -> None:
    @task
    def flights(**context: Any) -> dict[str, Any]:
        import datetime as dt

        from include.core.config import load_settings
        from include.core.lineage import require_known_conf
        from include.predict.batch import default_day

        require_known_conf(context)
        params = context["params"]
        settings = load_settings()
        day = dt.date.fromisoformat(params["date"]) if params.get("date") else default_day(
            settings.require_database_url())  # fmt: skip
        return {"day": day.isoformat(), "landing_file": params.get("landing_file") or None}

    @task
    def score(chosen: dict[str, Any]) -> dict[str, Any]:
        import datetime as dt

        from include.core.config import load_settings
        from include.predict.batch import scheduled_flights, score_scheduled

        settings = load_settings()
        day = dt.date.fromisoformat(chosen["day"])
        return score_scheduled(settings, day, scheduled_flights(settings, day, chosen["landing_file"]))

    score(flights())


nightshift_predict_batch()
