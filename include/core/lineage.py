"""Run lineage: each DAG run's form values (Params), trigger and window, recorded in `nightshift.runs`.

Everything a run produces (partitions, ingestion and validation rows, model versions, deployments,
drift reports, alerts) carries its `run_id`, so this one row per run ties the analyst's input to
every output. It is written by an `on_execute_callback` on every task, as an upsert: a retry, a
cleared task or the next task of the same run rewrites the same row.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from include.db import engine, runs, upsert

log = logging.getLogger("nightshift.lineage")


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _event(event: Any) -> dict[str, Any]:
    """An asset event that triggered the run: which asset, and which upstream run produced it."""
    return {
        "name": event.asset.name,
        "uri": event.asset.uri,
        "source_dag_id": event.source_dag_id,
        "source_run_id": event.source_run_id,
        "extra": event.extra,
    }


def run_row(context: dict[str, Any]) -> dict[str, Any]:
    """The `runs` row for the run a task context belongs to."""
    dag_run = context["dag_run"]
    run_type = getattr(dag_run, "run_type", "")
    events = getattr(dag_run, "consumed_asset_events", None) or []
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "run_type": str(getattr(run_type, "value", run_type)),
        "triggered_by": getattr(dag_run, "triggering_user_name", None),
        "params": _json(dict(context.get("params") or {})),
        "conf": _json(dict(getattr(dag_run, "conf", None) or {})),
        "assets": _json([_event(e) for e in events]),
        "logical_date": dag_run.logical_date,
        "data_interval_start": dag_run.data_interval_start,
        "data_interval_end": dag_run.data_interval_end,
        "run_after": dag_run.run_after,
    }


def record_run(context: dict[str, Any]) -> None:
    """`on_execute_callback`: upsert this run's row before the task does its work."""
    from include.core.config import load_settings

    with engine(load_settings().require_database_url()).begin() as conn:
        upsert(conn, runs, [run_row(context)])


def unknown_conf_keys(conf: dict[str, Any] | None, declared: Any) -> list[str]:
    """Keys of a trigger's `conf` that are no form field of the DAG (typos, or another DAG's fields)."""
    return sorted(set(conf or {}) - set(declared))


def require_known_conf(context: dict[str, Any]) -> None:
    """Fail the run at once when its conf names a field the form does not have: a typo like
    `start_dte` would otherwise be ignored and the run would quietly use the default."""
    from airflow.sdk.exceptions import AirflowFailException

    dag = context["dag"]
    unknown = unknown_conf_keys(getattr(context["dag_run"], "conf", None), dag.params.keys())
    if unknown:
        raise AirflowFailException(
            f"{dag.dag_id} has no form field {', '.join(map(repr, unknown))}; its fields are "
            f"{', '.join(sorted(dag.params.keys()))}"
        )
