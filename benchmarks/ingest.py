"""Time the ingest DAG as a user runs it: `airflow dags test` on Postgres, one day and a range.

    bin/nightshift prepare && .venv/bin/python -m benchmarks.ingest [--days 1 90]

Prints one line per case and writes `.local/bench/ingest.json`. Uses the same Postgres and lake
as `make demo` (DATABASE_URL or the embedded server), on days after the demo's window.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import sqlalchemy as sa

from include import db
from include.core.assets import INGEST_DAG
from include.core.config import load_settings
from include.ops.cli import prepare
from include.ops.demo import run_dag
from include.ops.postgres import embedded_data_dir, stop_embedded


def _task_seconds(url: str, run_id: str) -> dict[str, float]:
    with db.engine(url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT task_id, duration FROM task_instance WHERE dag_id = :d AND run_id = :r"),
            {"d": INGEST_DAG, "r": run_id},
        ).all()
    return {task: round(float(seconds or 0), 1) for task, seconds in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[1, 90])
    parser.add_argument("--start", default="2013-04-01", help="first day of every case")
    args = parser.parse_args()
    settings = load_settings()
    env = prepare(settings)
    url = env["NIGHTSHIFT_DATABASE_URL"]
    results = []
    try:
        for days in args.days:
            start = dt.date.fromisoformat(args.start)
            end = start + dt.timedelta(days=days - 1)
            conf = {"start_date": start.isoformat(), "end_date": end.isoformat()}
            began = time.monotonic()
            run_id, state = run_dag(env, INGEST_DAG, conf, quiet=True) or ("", "not started")
            seconds = time.monotonic() - began
            case = {"days": days, "start": str(start), "end": str(end), "state": state,
                    "seconds": round(seconds, 1), "tasks": _task_seconds(url, run_id)}  # fmt: skip
            results.append(case)
            print(json.dumps(case), flush=True)
            if state != "success":
                raise SystemExit(f"the {days}-day run ended {state}: `airflow dags test {INGEST_DAG}` shows why")
    finally:
        if not settings.database_url:
            stop_embedded(embedded_data_dir(settings.local_dir))
    out = settings.local_dir / "bench" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
