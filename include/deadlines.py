"""Deadline Alert callbacks (Airflow 3's replacement for SLAs); run in the triggerer.

The monitoring issue routes these to on-call (mail, webhook, the alerts table); until then a
missed deadline is logged loudly in the triggerer with the run it concerns.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("nightshift.deadlines")


async def deadline_missed(context: dict[str, Any], **kwargs: Any) -> None:
    run = context.get("dag_run", {})
    deadline = context.get("deadline", {})
    log.error(
        "DEADLINE MISSED: %s run %s was due by %s (%s)",
        run.get("dag_id"),
        run.get("run_id"),
        deadline.get("deadline_time"),
        kwargs.get("what", "deadline"),
    )
