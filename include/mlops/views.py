"""The ML Ops view's data and pages: runs, model versions, deployments, validations, drift and alerts.

Read-only queries (SQLAlchemy Core over `include.db`'s tables), rendered by the Jinja2 templates in
`templates/` with autoescape on, as small HTML pages that sit in an iframe of the Airflow UI. A link
is only ever a relative path or http(s) (never `javascript:`); no connection, password or token is
part of a page. Links to Airflow's own pages open in the top window. Lake files (Data Docs,
evaluation and drift reports, dataset manifests) are served by the app under `/mlops/files/`. The
app (`include/mlops/app.py`) serves these behind Airflow's auth.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from include import db

PREFIX = "/mlops"
PAGES = {"runs": "Runs", "versions": "Model versions", "deployments": "Deployments", "validations": "Validations",
         "drift": "Drift", "alerts": "Alerts", "predictions": "Predictions"}  # fmt: skip
TEMPLATES = Path(__file__).parent / "templates"
# Lake files the view may serve: reports (Data Docs, evaluation, Evidently) and dataset manifests.
SERVABLE_ZONES = ("reports",)
SERVABLE_NAMES = ("manifest.json",)
# Versions a promote may name: blessed, or served before.
PROMOTABLE = ("blessed", "archived", "rolled_back", "canary")


# ---------------------------------------------------------------- links


def safe_href(href: str | None) -> str | None:
    """Only relative paths and http(s) URLs become links; anything else (javascript:, data:, file:) does not."""
    if not href:
        return None
    if href.startswith("/") and not href.startswith("//"):
        return href
    return href if urlsplit(href).scheme in ("http", "https") else None


def run_href(dag_id: str | None, run_id: str | None) -> str | None:
    if not dag_id or not run_id:
        return None
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def view_href(path: str, **query: Any) -> str:
    query = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{PREFIX}/{path}" + (f"?{urlencode(query)}" if query else "")


def file_href(uri: str | None, lake_uri: str) -> str | None:
    """The view's URL for a lake file (`file://…` or `s3://…` under the lake root), else None."""
    relative = lake_relative(uri, lake_uri)
    return f"{PREFIX}/files/{quote(relative)}" if relative else None


def lake_relative(uri: str | None, lake_uri: str) -> str | None:
    root = lake_uri.rstrip("/") + "/"
    if not uri or not uri.startswith(root):
        return None
    relative = uri[len(root) :]
    return relative if servable(relative) else None


def servable(relative: str) -> bool:
    """A lake path the view may serve: under a report zone, or a dataset manifest; no `..` or hidden parts."""
    parts = relative.split("/")
    if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return False
    return parts[0] in SERVABLE_ZONES or (parts[0] == "datasets" and parts[-1] in SERVABLE_NAMES)


def href_for(target: str | None, lake_uri: str) -> tuple[str | None, bool]:
    """Where an alert or record link should go: a lake file in the view, or an http(s) page (top window)."""
    if target and target.startswith(("file://", "s3://")):
        return file_href(target, lake_uri), False
    return safe_href(target), True


# ---------------------------------------------------------------- values shown in the templates


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def utc(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if value else ""


def upstream_sources(events: list[dict[str, Any]] | None) -> list[tuple[Any, Any, Any]]:
    """The (asset, DAG, run) that started a run, once each: one run can send several events of an asset."""
    sources = ((ev.get("name"), ev.get("source_dag_id"), ev.get("source_run_id")) for ev in events or [])
    return list(dict.fromkeys(sources))


def delivery_outcome(result: str) -> tuple[str, str, str]:
    """A channel's outcome as (label, badge kind, reason), without its details: a webhook URL or a mail
    server's reply can carry secrets, so only a reason that is a bare name (an exception's) is kept."""
    if result.startswith(("sent", "posted")):
        return "delivered", "ok", ""
    if result.startswith("skipped"):
        return "not configured", "info", ""
    reason = result.split(":")[1].strip() if result.count(":") >= 2 else ""
    return "failed", "failed", reason if reason.isidentifier() else ""


# ---------------------------------------------------------------- templates


@cache
def environment() -> jinja2.Environment:
    """The templates, with autoescape on: a value is markup only when a macro made it so."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, finalize=lambda value: "" if value is None else value,
    )  # fmt: skip
    env.globals.update(prefix=PREFIX, pages=PAGES, safe_href=safe_href, run_href=run_href, view_href=view_href,
                       upstream_sources=upstream_sources, delivery_outcome=delivery_outcome)  # fmt: skip
    env.filters.update(fmt=fmt, utc=utc)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def macros() -> Any:
    """The page helpers of `macros.html.j2` (link, badge, run_link, params, upstream, delivery…) as callables."""
    return environment().get_template("macros.html.j2").module


def _rows(url: str, query: sa.Select) -> list[dict[str, Any]]:
    with db.engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


# ---------------------------------------------------------------- runs (lineage)


def runs(url: str, dag_id: str | None, limit: int = 100) -> list[dict[str, Any]]:
    query = sa.select(db.runs).order_by(db.runs.c.run_after.desc()).limit(limit)
    return _rows(url, query.where(db.runs.c.dag_id == dag_id) if dag_id else query)


def products(url: str, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What each run produced, by kind: days ingested, validations, versions, deployments, drift days, alerts."""
    if not run_ids:
        return {}
    ingested, validated, registered = db.ingestion_runs, db.validation_results, db.model_versions
    deployed, drift, alerted = db.deployments, db.drift_reports, db.alerts
    queries = {
        "ingested": sa.select(ingested.c.run_id, sa.func.count().label("days"),
                              sa.func.sum(ingested.c.rows_clean).label("flights"))
        .where(ingested.c.run_id.in_(run_ids)).group_by(ingested.c.run_id),
        "validations": sa.select(validated.c.run_id, sa.func.count().label("n"),
                                 sa.func.count().filter(sa.not_(validated.c.success)).label("failed"))
        .where(validated.c.run_id.in_(run_ids)).group_by(validated.c.run_id),
        "version": sa.select(registered.c.run_id, registered.c.version, registered.c.status)
        .where(registered.c.run_id.in_(run_ids)),
        "deployment": sa.select(deployed.c.run_id, deployed.c.version, deployed.c.action, deployed.c.succeeded)
        .where(deployed.c.run_id.in_(run_ids)).order_by(deployed.c.id),
        "drift": sa.select(drift.c.run_id, sa.func.count(sa.distinct(drift.c.partition_date)).label("days"))
        .where(drift.c.run_id.in_(run_ids)).group_by(drift.c.run_id),
        "alerts": sa.select(alerted.c.run_id, sa.func.count().label("n"))
        .where(alerted.c.run_id.in_(run_ids)).group_by(alerted.c.run_id),
    }  # fmt: skip
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, query in queries.items():
        for r in _rows(url, query):
            out.setdefault(r["run_id"], []).append({"kind": kind, **r})
    return out


def runs_page(dag_id: str | None, rows: list[dict[str, Any]], produced: dict[str, list[dict[str, Any]]]) -> str:
    return render("runs.html.j2", dag_id=dag_id, runs=rows, produced=produced)


# ---------------------------------------------------------------- model versions


def _labels_of(state: Any) -> dict[int, list[str]]:
    labels: dict[int, list[str]] = {}
    for label, version in (getattr(state, "labels", None) or {}).items():
        labels.setdefault(int(version), []).append(label)
    return labels


def versions(url: str, limit: int = 100) -> list[dict[str, Any]]:
    mv = db.model_versions
    return _rows(url, sa.select(mv).order_by(mv.c.version.desc()).limit(limit))


def model_version(url: str, version: int) -> dict[str, Any] | None:
    found = _rows(url, sa.select(db.model_versions).where(db.model_versions.c.version == version))
    return found[0] if found else None


def gate_checks(url: str, versions_: list[int]) -> dict[int, list[dict[str, Any]]]:
    gc = db.gate_checks
    by_version: dict[int, list[dict[str, Any]]] = {}
    for c in _rows(url, sa.select(gc).where(gc.c.version.in_(versions_)).order_by(gc.c.kind, gc.c.name)):
        by_version.setdefault(c["version"], []).append(c)
    return by_version


def versions_page(rows: list[dict[str, Any]], checks: dict[int, list[dict[str, Any]]], state: Any) -> str:
    labels = _labels_of(state)
    shown = [{**r, "labels": labels.get(r["version"], []), "checks": checks.get(r["version"], [])} for r in rows]
    return render("versions.html.j2", versions=shown)


def version_page(version: dict[str, Any], checks: list[dict[str, Any]], deployed: list[dict[str, Any]], state: Any,
                 lake_uri: str) -> str:  # fmt: skip
    """The version's page: metrics, gate checks, serving, lineage, its model card and the run's form values."""
    metrics = version["metrics"]
    card = f"{lake_uri.rstrip('/')}/reports/model_card/{int(version['version'])}"  # include/train/model_card.py
    return render(
        "version.html.j2", v=version, checks=checks, deployed=deployed,
        labels=_labels_of(state).get(version["version"], []),
        metric_rows=[(k, float(m)) for k, m in sorted(metrics.items()) if isinstance(m, int | float)],
        manifest_href=file_href(version["dataset_uri"].rstrip("/") + "/manifest.json", lake_uri),
        report_href=file_href(version["report_uri"], lake_uri),
        card_href=file_href(f"{card}/index.html", lake_uri),
        card_md_href=file_href(f"{card}/model_card.md", lake_uri),
        hyperparameters=json.dumps(version["hyperparameters"], indent=2, default=str),
    )  # fmt: skip


# ---------------------------------------------------------------- deployments


def deployments(url: str, version: int | None = None, limit: int | None = 100) -> list[dict[str, Any]]:
    query = sa.select(db.deployments).order_by(db.deployments.c.id.desc()).limit(limit)
    return _rows(url, query.where(db.deployments.c.version == version) if version is not None else query)


def promotable_versions(url: str) -> list[int]:
    """Versions a promote may name: blessed, or served before (archived / rolled back)."""
    mv = db.model_versions
    query = sa.select(mv.c.version).where(mv.c.status.in_(PROMOTABLE)).order_by(mv.c.version.desc())
    return [r["version"] for r in _rows(url, query)]


def deployments_page(model: str, state: Any, can_act: bool, promotable: list[int], history: list[dict[str, Any]],
                     requested: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Serving now (with the on-call actions), then the history; `requested` is the deploy run an action
    triggered (Airflow's DAG run JSON), shown as a banner the page follows until the run ends."""
    banner = None
    if requested:
        banner = {
            "action": (requested.get("conf") or {}).get("action", "deploy"),
            "user": requested.get("triggering_user_name") or "you",
            "dag_id": requested.get("dag_id"), "run_id": requested.get("dag_run_id"),
            "state": requested.get("state") or "queued",
        }  # fmt: skip
    return render(
        "deployments.html.j2", model=model, stable=getattr(state, "stable", None),
        canary=getattr(state, "canary", None), loaded=list(getattr(state, "versions", None) or []),
        can_act=can_act, promotable=promotable, history=history, banner=banner,
    )  # fmt: skip


def confirm_page(action: str, version: int | None, model: str, state: Any, previous: int | None) -> str:
    """What the action will do, in words, with the button that does it (POST, same origin); `previous` is
    what a rollback restores unless `version` names one."""
    return render("confirm.html.j2", action=action, version=version, model=model,
                  stable=getattr(state, "stable", None), target=version or previous)  # fmt: skip


# ---------------------------------------------------------------- validations


def validations(url: str, run_id: str | None, day: dt.date | None, limit: int = 100) -> list[dict[str, Any]]:
    v, ingested = db.validation_results, db.ingestion_runs
    dags = sa.select(ingested.c.run_id, ingested.c.dag_id).distinct().subquery("i")
    query = (
        sa.select(v, dags.c.dag_id).select_from(v.outerjoin(dags, dags.c.run_id == v.c.run_id))
        .order_by(v.c.partition_date.desc(), v.c.suite).limit(limit)
    )  # fmt: skip
    if run_id is not None:
        query = query.where(v.c.run_id == run_id)
    if day is not None:
        query = query.where(v.c.partition_date == day)
    return _rows(url, query)


def validations_page(rows: list[dict[str, Any]], lake_uri: str, run_id: str | None, day: dt.date | None) -> str:
    shown = [{
        **r, "docs_href": file_href(r["docs_uri"], lake_uri),
        "what_failed": "; ".join(str(f.get("expectation", f)) if isinstance(f, dict) else str(f)
                                 for f in r["failures"][:3]),
    } for r in rows]  # fmt: skip
    return render("validations.html.j2", validations=shown, run_id=run_id, day=day)


# ---------------------------------------------------------------- drift


def drift_series(url: str, days: int = 90) -> list[dict[str, Any]]:
    """Per monitored day (newest first): drift share, AUC, the inputs that drifted, and the retraining asked for."""
    d, retrain = db.drift_reports, db.retrain_requests
    query = (
        sa.select(
            d.c.partition_date.label("day"),
            sa.func.max(d.c.value).filter(d.c.metric == "drift_share").label("drift_share"),
            sa.func.max(d.c.value).filter(d.c.metric == "auc").label("auc"),
            sa.func.bool_or(d.c.crossed).label("crossed"),
            sa.func.array_remove(
                sa.func.array_agg(aggregate_order_by(d.c.feature, d.c.value.desc()))
                .filter(sa.and_(d.c.crossed, d.c.metric == "feature_drift")),
                sa.null(),
            ).label("drifted"),
            sa.func.max(d.c.report_uri).label("report"), sa.func.max(d.c.model_version).label("model_version"),
            sa.func.max(d.c.rows).label("rows"), sa.func.max(retrain.c.reason).label("retrain_reason"),
        )
        .select_from(d.outerjoin(retrain, retrain.c.partition_date == d.c.partition_date))
        .group_by(d.c.partition_date).order_by(d.c.partition_date.desc()).limit(days)
    )  # fmt: skip
    return _rows(url, query)


def drift_chart(series: list[dict[str, Any]], width: int = 760, height: int = 220) -> dict[str, Any] | None:
    """Where the SVG chart of drift share and ROC-AUC by day (oldest left, both on a 0…1 axis) draws what;
    None under two monitored days."""
    points = [s for s in reversed(series) if s["drift_share"] is not None]
    if len(points) < 2:
        return None
    left, right, top, bottom = 36, 24, 24, 28
    step = (width - left - right) / (len(points) - 1)

    def x(i: int) -> float:
        return left + i * step

    def y(value: float) -> float:
        return top + (1 - value) * (height - top - bottom)

    lines = [{
        "key": key, "color": color,
        "dots": [(x(i), y(p[key]), p["day"], p[key]) for i, p in enumerate(points) if p[key] is not None],
    } for key, color in (("drift_share", "#b54708"), ("auc", "#017cee"))]  # fmt: skip
    every = max(1, len(points) // 12)
    return {
        "width": width, "height": height, "left": left, "right": width - right,
        "grid": [(y(g), g) for g in (0, 0.25, 0.5, 0.75, 1.0)], "lines": lines,
        "ticks": [(x(i), p["day"]) for i, p in enumerate(points) if i % every == 0],
    }  # fmt: skip


def drift_page(series: list[dict[str, Any]]) -> str:
    return render("drift.html.j2", series=series, chart=drift_chart(series))


def monitored_days(url: str) -> list[dt.date]:
    day = db.drift_reports.c.partition_date
    return [r["d"] for r in _rows(url, sa.select(day.label("d")).distinct().order_by(day))]


def report_uri(url: str, day: dt.date) -> str | None:
    d = db.drift_reports
    with db.engine(url).connect() as conn:
        return conn.execute(sa.select(sa.func.max(d.c.report_uri)).where(d.c.partition_date == day)).scalar()


def drift_report_page(day: dt.date, src: str, days: list[dt.date]) -> str:
    """The day's Evidently report in a frame, under the view's navigation, with the days around it."""
    earlier, later = [d for d in days if d < day], [d for d in days if d > day]
    return render("drift_report.html.j2", day=day, src=src, earlier=max(earlier, default=None),
                  later=min(later, default=None))  # fmt: skip


# ---------------------------------------------------------------- alerts


def alerts(
    url: str, severity: str | None, kind: str | None, run_id: str | None, limit: int = 200
) -> list[dict[str, Any]]:
    a = db.alerts
    query = (
        sa.select(a.c.id, a.c.created_at, a.c.severity, a.c.kind, a.c.title, a.c.dag_id, a.c.task_id, a.c.run_id)
        .order_by(a.c.id.desc()).limit(limit)
    )  # fmt: skip
    for column, value in ((a.c.severity, severity), (a.c.kind, kind), (a.c.run_id, run_id)):
        if value is not None:
            query = query.where(column == value)
    return _rows(url, query)


def alert_kinds(url: str) -> list[str]:
    kind = db.alerts.c.kind
    return [r["kind"] for r in _rows(url, sa.select(kind).distinct().order_by(kind))]


def alerts_page(rows: list[dict[str, Any]], severities: list[str], kinds: list[str], severity: str | None,
                kind: str | None, run_id: str | None) -> str:  # fmt: skip
    return render("alerts.html.j2", alerts=rows, severities=list(severities), kinds=kinds, severity=severity,
                  kind=kind, run_id=run_id)  # fmt: skip


def alert(url: str, alert_id: int) -> dict[str, Any] | None:
    found = _rows(url, sa.select(db.alerts).where(db.alerts.c.id == alert_id))
    return found[0] if found else None


def alert_page(found: dict[str, Any], lake_uri: str) -> str:
    target, top = href_for(found["link"], lake_uri)
    deliveries = [(channel, str(d)) for channel, d in sorted((found["deliveries"] or {}).items())]
    return render("alert.html.j2", alert=found, target=target, top=top, deliveries=deliveries)


# ---------------------------------------------------------------- predictions


def served_by_day(url: str, days: int = 30) -> list[dict[str, Any]]:
    """What the prediction service answered, per flight day (newest first), version and arm."""
    b = db.served_batches
    recent = sa.select(b.c.flight_date).distinct().order_by(b.c.flight_date.desc()).limit(days).subquery()
    query = (
        sa.select(b.c.flight_date.label("day"), b.c.model_version, b.c.arm, sa.func.sum(b.c.rows).label("rows"),
                  sa.func.sum(b.c.errors).label("errors"), sa.func.count().label("files"),
                  sa.func.max(b.c.written_at).label("last_written"))
        .where(b.c.flight_date.in_(sa.select(recent.c.flight_date)))
        .group_by(b.c.flight_date, b.c.model_version, b.c.arm)
        .order_by(b.c.flight_date.desc(), b.c.model_version, b.c.arm)
    )  # fmt: skip
    return _rows(url, query)


def canary_share(url: str, model: str, canary: int | None) -> float | None:
    """The share of flights the canary's deployment asked for (None: no canary, or none recorded)."""
    from include.predict.routing import canary_percent

    return None if canary is None else canary_percent(url, model, canary, default=None)


def scheduled_outputs(lake_root: Any) -> list[str]:
    """The days `nightshift_predict_batch` wrote predictions for, newest first."""
    folder = lake_root / "predictions" / "scheduled"
    if not folder.exists():
        return []
    days = [p.name.removeprefix("date=") for p in folder.iterdir() if p.name.startswith("date=")]
    return sorted((d for d in days if (folder / f"date={d}" / "part-0.parquet").exists()), reverse=True)


def health_series(url: str, hours: float = 24.0) -> list[dict[str, Any]]:
    """The health checks of the last `hours`, oldest first: per check and arm, flights, errors, p50/p99."""
    h = db.serving_health
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    query = sa.select(h).where(h.c.checked_at >= since).order_by(h.c.checked_at, h.c.arm)
    return _rows(url, query)


def health_chart(series: list[dict[str, Any]], width: int = 760, height: int = 200) -> dict[str, Any] | None:
    """Where the SVG chart draws flights per check (bars) and p99 latency (lines) per arm; None under two checks."""
    checks = sorted({r["checked_at"] for r in series})
    if len(checks) < 2:
        return None
    left, right, top, bottom = 44, 24, 24, 28
    step = (width - left - right) / (len(checks) - 1)
    index = {c: i for i, c in enumerate(checks)}
    served = [r for r in series if r["arm"] != "probe"]
    most = max([r["requests"] for r in served] + [1])
    slowest = max([r["p99_ms"] or 0 for r in served] + [1.0])

    def x(at: dt.datetime) -> float:
        return left + index[at] * step

    def y(share: float) -> float:
        return top + (1 - share) * (height - top - bottom)

    colors = {"stable": "#017cee", "canary": "#b54708"}
    lines = [{"arm": arm, "color": colors.get(arm, "#52606d"),
              "dots": [(x(r["checked_at"]), y((r["p99_ms"] or 0) / slowest), r["checked_at"], r["p99_ms"] or 0,
                        r["requests"], r["errors"]) for r in served if r["arm"] == arm]}
             for arm in sorted({r["arm"] for r in served})]  # fmt: skip
    down = [x(r["checked_at"]) for r in series if r["arm"] == "probe" and r["state"] != "AVAILABLE"]
    every = max(1, len(checks) // 8)
    return {"width": width, "height": height, "left": left, "right": width - right, "top": top,
            "bottom": height - bottom, "lines": lines, "down": down, "slowest": slowest, "most": most,
            "ticks": [(x(c), c) for i, c in enumerate(checks) if i % every == 0]}  # fmt: skip


def predictions_page(served: list[dict[str, Any]], state: Any, share: float | None, scheduled: list[str],
                     health: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    health = health or []
    return render("predictions.html.j2", served=served, state=state, share=share, scheduled=scheduled,
                  chart=health_chart(health), latest=[r for r in health if r["checked_at"] == max(
                      (h["checked_at"] for h in health), default=None)])  # fmt: skip
