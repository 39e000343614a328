"""The README's main command: set everything up, run the pipeline, write and print a summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include import db
from include.core import lake
from include.core.assets import DEPLOY_DAG, INGEST_DAG, MONITOR_DAG, TRAIN_DAG
from include.core.calendar import days_between
from include.core.config import NightlyTraining, Settings, load_settings
from include.ingest.publish import online_row_count
from include.ops.postgres import embedded_data_dir, stop_embedded
from include.serving.process import local_server

MONITOR_DAYS = 7
SMOKE_ROWS = 3


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
    materialized = _xcom(url, INGEST_DAG, run_id, "materialize") or {}
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


def train_summary(url: str, run_id: str) -> dict[str, Any]:
    registered = _xcom(url, TRAIN_DAG, run_id, "gate_and_register") or {}
    tuned = _xcom(url, TRAIN_DAG, run_id, "tune") or {}
    return {
        "version": registered.get("version"),
        "status": registered.get("status"),
        "auc": registered.get("auc"),
        "gbdt_auc": registered.get("gbdt_auc"),
        "auc_ratio": registered.get("auc_ratio"),
        "trials": tuned.get("trials"),
        "members": len(tuned.get("members", [])),
        "checks": registered.get("checks"),
        "failed_checks": registered.get("failed_checks"),
        "report": registered.get("report"),
    }


def deploy_summary(settings: Settings, url: str, run_id: str) -> dict[str, Any]:
    """Serving as it stands, checked through the same client the pipeline uses."""
    from include.deploy.savedmodel import sample_rows
    from include.serving.client import client_for
    from include.serving.state import read_state
    from include.train.registry import get_version

    state = read_state(settings)
    validated = _xcom(url, DEPLOY_DAG, run_id, "infra_validate") or {}
    summary: dict[str, Any] = {
        "model": settings.model_name,
        "stable_version": state.stable,
        "canary_version": state.canary,
        "serving_url": settings.serving_url,
        "infra_validation": {k: validated.get(k) for k in ("available", "signature", "requests", "max_abs_diff")},
    }
    if state.stable is not None:
        rows = sample_rows(settings, get_version(url, state.stable)["dataset_uri"], SMOKE_ROWS, seed=1)
        with client_for(settings) as client:
            predictions = client.predict_rows(rows, label="stable")
        summary["smoke_predictions"] = [
            {"carrier": r["carrier"], "origin": r["origin"], "dest": r["dest"], "p_delayed": round(float(p[0]), 4)}
            for r, p in zip(rows, predictions, strict=True)
        ]
    return summary


def _record(summary: dict[str, Any], label: str, result: tuple[str, str] | None) -> bool:
    if result is None:
        return False
    summary["dag_runs"][label], summary["run_ids"][label] = result[1], result[0]
    return result[1] == "success"


def deploy_and_monitor(env: dict[str, str], settings: Settings, summary: dict[str, Any], last: dt.date) -> None:
    """Deploy the blessed version, then ingest and monitor the week after the training window."""
    url = env["NIGHTSHIFT_DATABASE_URL"]
    deployed = run_dag(env, DEPLOY_DAG, {"version": summary["train"]["version"], "action": "promote"})
    if not _record(summary, DEPLOY_DAG, deployed):
        return
    summary["deploy"] = deploy_summary(settings, url, deployed[0])
    week = [last + dt.timedelta(days=n) for n in range(1, MONITOR_DAYS + 1)]
    conf = {"start_date": week[0].isoformat(), "end_date": week[-1].isoformat()}
    if not _record(summary, f"{INGEST_DAG} (monitored week)", run_dag(env, INGEST_DAG, conf)):
        return
    monitored = run_dag(env, MONITOR_DAG, conf)
    _record(summary, MONITOR_DAG, monitored)
    if monitored is not None:
        summary["monitor"] = monitor_summary(settings, url, monitored[0])
    try:
        summary["predict"] = predict_summary(load_settings({**env, "NIGHTSHIFT_DATABASE_URL": url}), week[-1])
    except Exception as err:  # the summary is still written, and the demo fails (run_demo's exit status)
        summary["predict"] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(f"nightshift: the prediction service step failed: {summary['predict']['error']}", flush=True)


def predict_summary(settings: Settings, day: dt.date) -> dict[str, Any]:
    """The prediction service on what the demo built: three of the day's flights by key, and the skew check
    over the morning's hours (online, through the service, against the offline point-in-time features)."""
    from include.contract.inputs import serving_columns
    from include.core.calendar import end_of_day_utc, local_midnight_utc
    from include.core.config import PredictService
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window
    from include.predict import keys
    from include.predict.app import running
    from include.predict.parity import callers_flights, replay_parity
    from include.serving.client import client_for
    from include.serving.state import read_state

    url = settings.require_database_url()
    config = PredictService.from_env()
    name = f"demo-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    key = keys.create_key(url, name, config.requests_per_minute)
    stable = read_state(settings).stable

    def offline(frame: pd.DataFrame) -> list[float]:
        with client_for(settings) as client:
            return [float(p[0]) for p in client.predict_columns(serving_columns(frame), version=stable)]

    print(f"==> prediction service: three flights of {day} by key, then the skew check on {day} 06:00-09:00",
          flush=True)  # fmt: skip
    try:
        with running(settings, config) as (service_url, _):
            flights = list(callers_flights(settings, day).values())[:3]
            import httpx

            answered = httpx.post(f"{service_url}/v1/predict", json={"flights": flights}, timeout=60,
                                  headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            answered.raise_for_status()
            parity = replay_parity(settings, day, service_url, key, offline, hours=range(6, 9))
    finally:
        keys.revoke_key(url, name)
        # The skew check left the online store at 08:00 of the day; it holds the day's end again.
        materialize_window(open_store(settings), (local_midnight_utc(day) - pd.Timedelta(days=2)).to_pydatetime(),
                           (end_of_day_utc(day) + pd.Timedelta(seconds=1)).to_pydatetime())  # fmt: skip
    return {
        "url": f"http://{config.host}:{config.port}/v1/predict",
        "started_with": "bin/nightshift predict (make airflow starts it too)",
        "online_predictions": [
            {k: p[k] for k in ("flight_key", "p_delayed", "arm", "model_version")}
            for p in answered.json()["predictions"]
        ],
        "parity_max_abs_diff": parity["max_abs_diff"],
        "parity_flights": parity["flights"],
    }


def monitor_summary(settings: Settings, url: str, run_id: str) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from include.db import alerts

    reports = _xcom(url, MONITOR_DAG, run_id, "report") or []
    if not reports:
        return {"days": 0}
    with db.engine(url).connect() as conn:
        raised = conn.execute(
            sa.select(alerts.c.kind, alerts.c.severity, alerts.c.title).where(alerts.c.run_id == run_id)
        ).all()
    from include.monitor.steps import predictions_file

    # The pooled AUC of the week, from the logged predictions.
    frames = [lake.read_parquet(predictions_file(settings, dt.date.fromisoformat(r["day"]))) for r in reports]
    pooled = pd.concat(frames)
    return {
        "days": len(reports),
        "first_day": reports[0]["day"],
        "last_day": reports[-1]["day"],
        "rows": int(sum(r["rows"] for r in reports)),
        "drift_share": round(sum(r["drift_share"] for r in reports) / len(reports), 4),
        "drift_share_max": max(r["drift_share"] for r in reports),
        "drifted_features": sorted({f for r in reports for f in r["drifted_features"]}),
        "auc_current": round(float(roc_auc_score(pooled["is_delayed"], pooled["prediction"])), 4),
        "auc_test": reports[-1]["test_auc"],
        "alerts": len(raised),
        "alert_titles": [f"[{severity}] {title}" for _, severity, title in raised],
        "report": reports[-1]["report"],
        "seconds_per_day": round(sum(r["seconds"] for r in reports) / len(reports), 1),
    }


def run_dag(env: dict[str, str], dag_id: str, conf: dict[str, Any], quiet: bool = False) -> tuple[str, str] | None:
    """`airflow dags test` one DAG; returns its (run_id, state) as Airflow recorded them."""
    print(f"==> running {dag_id} with `airflow dags test` {json.dumps(conf)}", flush=True)
    # Airflow 3.3.2's dag.test cannot prune a successful run's deadlines; the scheduler can.
    output = subprocess.DEVNULL if quiet else None
    subprocess.run(["airflow", "dags", "test", dag_id, "-c", json.dumps(conf)],
                   env={**env, "NIGHTSHIFT_DEADLINES": "off"}, check=False, stdout=output, stderr=output)  # fmt: skip
    return latest_run(env["NIGHTSHIFT_DATABASE_URL"], dag_id)


def print_table(summary: dict[str, Any]) -> None:
    print("\nnightshift demo summary")
    print("-" * 46)
    for dag_id, state in summary["dag_runs"].items():
        print(f"{dag_id:<30} {state:>14}")
    print("-" * 46)
    for section in ("ingest", "train", "deploy", "monitor", "predict"):
        for key, value in summary.get(section, {}).items():
            if isinstance(value, (dict, list)):
                continue
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{section}.{key:<{32 - len(section)}} {text:>12}")
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
        ingested = run_dag(env, INGEST_DAG, {"start_date": first.isoformat(), "end_date": last.isoformat()})
        if ingested is None:
            print(f"nightshift: {INGEST_DAG} produced no run; see the output above")
            return 1
        summary: dict[str, Any] = {
            "dag_runs": {INGEST_DAG: ingested[1]},
            "ingest": ingest_summary(url, ingested[0], days),
            "run_ids": {INGEST_DAG: ingested[0]},
        }
        if ingested[1] == "success":
            # The nightly budget (NIGHTSHIFT_NIGHTLY_*, fits 2 CPU cores), on the bootstrap window.
            budget = dataclasses.asdict(NightlyTraining.from_env(env))
            trained = run_dag(env, TRAIN_DAG, {**budget, "end_date": last.isoformat()})
            if trained is not None:
                summary["dag_runs"][TRAIN_DAG] = trained[1]
                summary["run_ids"][TRAIN_DAG] = trained[0]
                summary["train"] = train_summary(url, trained[0])
            if trained is not None and summary["train"]["status"] == "blessed":
                with local_server(load_settings(env), env) as serving_url:  # port 0: the port it got
                    env = {**env, "NIGHTSHIFT_SERVING_URL": serving_url}
                    deploy_and_monitor(env, load_settings(env), summary, last)
        summary["seconds"] = round(time.monotonic() - began, 1)
        summary["path"] = str(summary_path(settings))
        path = summary_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print_table(summary)
        predicted = "error" not in summary.get("predict", {})
        return 0 if predicted and all(state == "success" for state in summary["dag_runs"].values()) else 1
    finally:
        if not settings.database_url and not keep_postgres:
            stop_embedded(embedded_data_dir(settings.local_dir))
