"""The README's main command: set everything up, run the pipeline, write and print a summary."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include import db
from include.config import Settings
from include.feature_store import online_row_count
from include.ingest import DAG_ID, days_between
from include.postgres import embedded_data_dir, stop_embedded


def summary_path(settings: Settings) -> Path:
    return settings.local_dir / "demo" / "summary.json"


def latest_run(url: str, dag_id: str) -> tuple[str, str] | None:
    with db.engine(url).connect() as conn:
        row = conn.execute(
            sa.text("SELECT run_id, state FROM dag_run WHERE dag_id = :d ORDER BY id DESC LIMIT 1"), {"d": dag_id}
        ).first()
    return (row[0], row[1]) if row else None


def _xcom(url: str, dag_id: str, run_id: str, task_id: str) -> Any:
    with db.engine(url).connect() as conn:
        value = conn.execute(
            sa.text(
                "SELECT value FROM xcom WHERE dag_id = :d AND run_id = :r AND task_id = :t AND key = 'return_value'"
            ),
            {"d": dag_id, "r": run_id, "t": task_id},
        ).scalar()
    return json.loads(value) if isinstance(value, str) else value


def ingest_summary(url: str, run_id: str, days: list[dt.date]) -> dict[str, Any]:
    """What the run did, read back from Postgres (not from the process that did it)."""
    with db.engine(url).connect() as conn:
        totals = conn.execute(
            sa.select(
                sa.func.count(), sa.func.sum(db.ingestion_runs.c.rows_raw),
                sa.func.sum(db.ingestion_runs.c.rows_clean), sa.func.sum(db.ingestion_runs.c.rows_quarantined),
            ).where(db.ingestion_runs.c.run_id == run_id)
        ).one()  # fmt: skip
        checks = conn.execute(
            sa.select(sa.func.count(), sa.func.bool_and(db.validation_results.c.success),
                      sa.func.sum(db.validation_results.c.warning_failed))
            .where(db.validation_results.c.run_id == run_id)
        ).one()  # fmt: skip
    materialized = _xcom(url, DAG_ID, run_id, "materialize") or {}
    return {
        "days": int(totals[0]),
        "first_day": days[0].isoformat(),
        "last_day": days[-1].isoformat(),
        "rows_raw": int(totals[1] or 0),
        "rows_clean": int(totals[2] or 0),
        "rows_quarantined": int(totals[3] or 0),
        "validation_success": bool(checks[1]) if checks[0] else False,
        "validation_suite_runs": int(checks[0]),
        "validation_warnings": int(checks[2] or 0),
        "feature_views_materialized": int(materialized.get("feature_views_materialized", 0)),
        "online_rows": online_row_count(url),
    }


def print_table(summary: dict[str, Any]) -> None:
    print("\nnightshift demo summary")
    print("-" * 46)
    for dag_id, state in summary["dag_runs"].items():
        print(f"{dag_id:<30} {state:>14}")
    print("-" * 46)
    for key, value in summary["ingest"].items():
        print(f"ingest.{key:<26} {value!s:>12}")
    print("-" * 46)
    print(f"took {summary['seconds']:.0f} s; written to {summary['path']}\n")


def run_demo(
    settings: Settings,
    prepare: Callable[[Settings], dict[str, str]],
    start: str | None,
    end: str | None,
    keep_postgres: bool = False,
) -> int:
    began = time.monotonic()
    first = dt.date.fromisoformat(start) if start else settings.bootstrap_start
    last = dt.date.fromisoformat(end) if end else settings.bootstrap_end
    days = days_between(first, last)
    try:
        env = prepare(settings)
        url = env["NIGHTSHIFT_DATABASE_URL"]
        print(f"==> running {DAG_ID} for {first} … {last} ({len(days)} days) with `airflow dags test`", flush=True)
        conf = json.dumps({"start_date": first.isoformat(), "end_date": last.isoformat()})
        subprocess.run(["airflow", "dags", "test", DAG_ID, "-c", conf], env=env, check=False)
        latest = latest_run(url, DAG_ID)
        if latest is None:
            print(f"nightshift: {DAG_ID} produced no run; see the output above")
            return 1
        run_id, state = latest
        summary = {
            "dag_runs": {DAG_ID: state},
            "ingest": ingest_summary(url, run_id, days),
            "run_id": run_id,
            "seconds": round(time.monotonic() - began, 1),
            "path": str(summary_path(settings)),
        }
        path = summary_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print_table(summary)
        return 0 if state == "success" else 1
    finally:
        if not settings.database_url and not keep_postgres:
            stop_embedded(embedded_data_dir(settings.local_dir))
