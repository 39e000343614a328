"""What every nightshift DAG shares: retries with backoff, lineage, the failure alert, the date-range form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from include.core.alerts import on_task_failure
from include.core.lineage import record_run


def default_args(retry_delay: timedelta, max_retry_delay: timedelta) -> dict[str, Any]:
    """Two retries with exponential backoff; after the last one, on-call gets an alert.

    Every task first records its run's Params and trigger (`include.core.lineage`), for lineage.
    """
    return {
        "owner": "nightshift",
        "retries": 2,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": max_retry_delay,
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
