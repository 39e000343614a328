"""The ML Ops view's data and pages: model versions, deployments, validations, drift and alerts.

Read-only queries over nightshift's Postgres tables, rendered as small HTML pages. Every value
that comes from data or from the request is escaped; no connection, password or token is ever
part of a page. The plugin (`plugins/nightshift_mlops.py`) serves these behind Airflow's auth.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa

from include.db import engine, validation_results

PAGES = {"versions": "Model versions", "deployments": "Deployments", "validations": "Validations",
         "drift": "Drift", "alerts": "Alerts"}  # fmt: skip
STYLE = """body{font:14px system-ui,sans-serif;margin:16px;color:#1f2933}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #d9e2ec;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f0f4f8}
nav a{margin-right:14px}.critical{color:#b42318;font-weight:600}.warning{color:#b54708}.ok{color:#027a48}
form.inline{display:inline}code{font-size:12px}"""


def e(value: Any) -> str:
    """Escape anything for HTML text and attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, prefix: str) -> str:
    nav = " ".join(f'<a href="{e(prefix)}/{key}">{e(name)}</a>' for key, name in PAGES.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)} · nightshift</title>"
            f"<style>{STYLE}</style></head><body><nav>{nav}</nav><h1>{e(title)}</h1>{body}</body></html>")  # fmt: skip


def table(headers: list[str], rows: list[list[str]]) -> str:
    """`rows` hold already-escaped cell HTML."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td>none yet</td></tr>'}</tbody></table>"


def link(href: str | None, text: Any) -> str:
    if not href:
        return e(text)
    return f'<a href="{e(href)}">{e(text)}</a>'


def run_link(base_url: str, dag_id: str | None, run_id: str | None) -> str:
    if not dag_id or not run_id:
        return ""
    return link(f"{base_url}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}", run_id)


def _rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(query), params or {}).mappings()]


def versions(url: str, base_url: str, limit: int = 50) -> list[list[str]]:
    rows = _rows(url, "SELECT * FROM nightshift.model_versions ORDER BY version DESC LIMIT :n", {"n": limit})
    checks = _rows(url, "SELECT version, name, passed, observed, threshold FROM nightshift.gate_checks")
    by_version: dict[int, list[str]] = {}
    for c in checks:
        mark = "ok" if c["passed"] else "critical"
        by_version.setdefault(c["version"], []).append(f'<span class="{mark}">{e(c["name"])}</span>')
    return [[
        e(r["version"]), e(r["status"]),
        e(f"{r['metrics'].get('auc', float('nan')):.4f}"), e(f"{r['metrics'].get('auc_ratio', float('nan')):.3f}"),
        " ".join(by_version.get(r["version"], [])), e(r["gate_note"]),
        link(r["report_uri"], "report"), f"<code>{e(r['dataset_uri'])}</code>",
        e(len(r["ingestion_run_ids"])) + " ingest / " + e(len(r["validation_run_ids"])) + " validation runs",
        run_link(base_url, r["dag_id"], r["run_id"]),
    ] for r in rows]  # fmt: skip


VERSION_HEADERS = ["version", "status", "AUC", "vs GBDT", "gate checks", "note", "evaluation", "dataset",
                   "lineage", "training run"]  # fmt: skip


def deployments(url: str, base_url: str, limit: int = 100) -> list[list[str]]:
    rows = _rows(url, "SELECT * FROM nightshift.deployments ORDER BY id DESC LIMIT :n", {"n": limit})
    return [[
        e(r["created_at"].strftime("%Y-%m-%d %H:%M:%S")), e(r["version"]), e(r["action"]),
        '<span class="ok">ok</span>' if r["succeeded"] else '<span class="critical">failed</span>',
        e(r["stable_version"]), e(r["canary_version"]), e(r["reason"]), run_link(base_url, r["dag_id"], r["run_id"]),
    ] for r in rows]  # fmt: skip


DEPLOYMENT_HEADERS = ["when (UTC)", "version", "action", "outcome", "stable after", "canary after", "reason", "run"]


def validations(url: str, limit: int = 60) -> list[list[str]]:
    with engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(validation_results).order_by(validation_results.c.partition_date.desc(),
                                                   validation_results.c.suite).limit(limit)
        ).mappings().all()  # fmt: skip
    return [[
        e(r["partition_date"]), e(r["suite"]),
        '<span class="ok">passed</span>' if r["success"] else '<span class="critical">failed</span>',
        e(r["evaluated"]), e(r["critical_failed"]), e(r["warning_failed"]),
        link(r["docs_uri"], "Data Docs"), e(r["run_id"]),
    ] for r in rows]  # fmt: skip


VALIDATION_HEADERS = ["day", "suite", "result", "expectations", "critical failed", "warnings", "docs", "run"]


def drift_series(url: str, days: int = 60) -> list[dict[str, Any]]:
    return _rows(
        url,
        """
        SELECT partition_date AS day,
               max(value) FILTER (WHERE metric = 'drift_share') AS drift_share,
               max(value) FILTER (WHERE metric = 'auc') AS auc,
               bool_or(crossed) FILTER (WHERE metric <> 'retrain_requested') AS crossed,
               max(report_uri) AS report, max(model_version) AS model_version, max(rows) AS rows
        FROM nightshift.drift_reports GROUP BY partition_date ORDER BY partition_date DESC LIMIT :n""",
        {"n": days},
    )


def drift_chart(series: list[dict[str, Any]], width: int = 720, height: int = 180) -> str:
    """An inline SVG of drift share and AUC over days (oldest left)."""
    points = [s for s in reversed(series) if s["drift_share"] is not None]
    if len(points) < 2:
        return "<p>The chart needs two monitored days.</p>"
    step = (width - 40) / (len(points) - 1)

    def line(key: str, color: str) -> str:
        coords = " ".join(f"{20 + i * step:.1f},{height - 20 - (p[key] or 0) * (height - 40):.1f}"
                          for i, p in enumerate(points))  # fmt: skip
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>'

    labels = "".join(f'<text x="{20 + i * step:.1f}" y="{height - 4}" font-size="9" text-anchor="middle">'
                     f"{e(p['day'].strftime('%m-%d'))}</text>" for i, p in enumerate(points))  # fmt: skip
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="drift share and AUC by day">'
            f'{line("drift_share", "#b54708")}{line("auc", "#1570ef")}{labels}'
            '<text x="24" y="14" font-size="11" fill="#b54708">drift share</text>'
            '<text x="110" y="14" font-size="11" fill="#1570ef">ROC-AUC</text></svg>')  # fmt: skip


def drift_rows(series: list[dict[str, Any]], prefix: str) -> list[list[str]]:
    return [[
        e(s["day"]), e(s["model_version"]), e(s["rows"]),
        e(f"{s['drift_share']:.2f}" if s["drift_share"] is not None else ""),
        e(f"{s['auc']:.3f}" if s["auc"] is not None else ""),
        '<span class="warning">yes</span>' if s["crossed"] else "no",
        link(f"{prefix}/drift/report?{urlencode({'day': s['day'].isoformat()})}", "Evidently report"),
    ] for s in series]  # fmt: skip


DRIFT_HEADERS = ["day", "model", "flights", "drift share", "AUC", "threshold crossed", "report"]


def report_uri(url: str, day: dt.date) -> str | None:
    query = "SELECT max(report_uri) AS uri FROM nightshift.drift_reports WHERE partition_date = :d"
    rows = _rows(url, query, {"d": day})
    return rows[0]["uri"] if rows else None


def alerts(url: str, severity: str | None, kind: str | None, limit: int = 200) -> list[list[str]]:
    rows = _rows(url, """
        SELECT * FROM nightshift.alerts
        WHERE (CAST(:severity AS text) IS NULL OR severity = :severity)
          AND (CAST(:kind AS text) IS NULL OR kind = :kind)
        ORDER BY id DESC LIMIT :n""", {"severity": severity, "kind": kind, "n": limit})  # fmt: skip
    return [[
        e(r["created_at"].strftime("%Y-%m-%d %H:%M:%S")), f'<span class="{e(r["severity"])}">{e(r["severity"])}</span>',
        e(r["kind"]), f"<details><summary>{e(r['title'])}</summary><pre>{e(r['message'])}</pre></details>",
        link(r["link"], "look here"), e(" / ".join(x for x in (r["dag_id"], r["task_id"]) if x)),
    ] for r in rows]  # fmt: skip


ALERT_HEADERS = ["when (UTC)", "severity", "kind", "what happened", "link", "source"]


def alert_kinds(url: str) -> list[str]:
    return [r["kind"] for r in _rows(url, "SELECT DISTINCT kind FROM nightshift.alerts ORDER BY kind")]
