"""What every nightshift DAG shares: retries with backoff, timeouts, lineage, the failure alert, the date-range form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from include.core.alerts import on_task_failure
from include.core.config import task_timeout
from include.core.lineage import record_run


def default_args(retry_delay: timedelta, max_retry_delay: timedelta, dag_id: str | None = None) -> dict[str, Any]:
    """Two retries with exponential backoff; after the last one, on-call gets an alert.

    Every task has an `execution_timeout`: `dag_id`'s default from `include.core.config.task_timeout`
    (without `dag_id`, the default of every DAG); a long step sets its own. A hung step is failed,
    and retried, instead of holding its pool slot forever.
    Every task first records its run's Params and trigger (`include.core.lineage`), for lineage.
    """
    return {
        "owner": "nightshift",
        "retries": 2,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": max_retry_delay,
        "execution_timeout": task_timeout(dag_id),
        "on_execute_callback": record_run,
        "on_failure_callback": on_task_failure,
    }


def date_range_params(verb: str, when_empty: str) -> dict[str, Any]:
    """The `start_date` / `end_date` form fields of a DAG that works on New York calendar days."""
    from airflow.sdk import Param

    return {
        "start_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title=f"First day to {verb}",
            description=f"A New York calendar day (YYYY-MM-DD in a conf). Leave empty to {when_empty}.",
            section="Date range",
        ),
        "end_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title=f"Last day to {verb}",
            description="Inclusive. Leave empty for a single day.",
            section="Date range",
        ),
    }
