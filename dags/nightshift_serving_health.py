"""Serving health every 5 minutes: TF Serving's model status and the prediction service's traffic per arm.

* **check** probes `stable` on the server and reads the served-prediction log of the last 5 minutes: per
  arm and version, flights, errors and p50/p99 latency, into `serving_health` (charted on the ML Ops
  view's Predictions page). Serving down, or an arm's error rate over `NIGHTSHIFT_HEALTH_MAX_ERROR_RATE`,
  opens an incident with exactly one critical alert, within 10 minutes of its start; the check that finds
  it over notes the recovery on that alert.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from include.core.access import access_control
from include.core.assets import SERVING_HEALTH_DAG as HEALTH_DAG
from include.core.config import task_timeout
from include.core.dag_defaults import default_args

DEFAULT_ARGS = default_args(retry_delay=timedelta(seconds=30), max_retry_delay=timedelta(minutes=1), dag_id=HEALTH_DAG)


@dag(
    dag_id=HEALTH_DAG,
    access_control=access_control(HEALTH_DAG),
    description=__doc__.partition(".")[0],
    doc_md=__doc__,
    schedule=timedelta(minutes=5),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=["nightshift", "predict"],
)
def nightshift_serving_health() -> None:
    @task(execution_timeout=task_timeout(HEALTH_DAG, "check"))
    def check(**context: Any) -> dict[str, Any]:
        from include.core.config import ServingHealth, load_settings
        from include.predict.health import check

        return check(load_settings(), ServingHealth.from_env(), context["run_id"])

    check()


nightshift_serving_health()
