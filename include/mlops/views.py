"""The ML Ops view's data and pages: runs, model versions, deployments, validations, drift and alerts.

Read-only queries over nightshift's Postgres tables, rendered as small HTML pages that sit in an
iframe of the Airflow UI. Every value that comes from data or from the request is escaped, and a
link is only ever a relative path or http(s) (never `javascript:`); no connection, password or
token is part of a page. Links to Airflow's own pages open in the top window. Lake files (Data
Docs, evaluation and drift reports, dataset manifests) are served by the plugin under
`/mlops/files/`. The plugin (`plugins/nightshift_mlops.py`) serves these behind Airflow's auth.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import sqlalchemy as sa

from include.db import engine

PREFIX = "/mlops"
PAGES = {"runs": "Runs", "versions": "Model versions", "deployments": "Deployments", "validations": "Validations",
         "drift": "Drift", "alerts": "Alerts"}  # fmt: skip
# Lake files the view may serve: reports (Data Docs, evaluation, Evidently) and dataset manifests.
SERVABLE_ZONES = ("reports",)
SERVABLE_NAMES = ("manifest.json",)
STYLE = """
:root{--fg:#1f2933;--muted:#52606d;--line:#e4e7eb;--head:#f5f7fa;--accent:#017cee}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:var(--fg)}
header{padding:12px 20px 0;border-bottom:1px solid var(--line)}
nav a{display:inline-block;padding:6px 12px;margin-right:2px;color:var(--muted);text-decoration:none;
  border-bottom:2px solid transparent}nav a.on{color:var(--fg);border-color:var(--accent);font-weight:600}
main{padding:16px 20px 32px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:24px 0 8px}
a{color:var(--accent)}td a,.nowrap{white-space:nowrap}td a.run{white-space:normal;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:4px 0 8px}
td,th{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase}
tbody tr:hover{background:#fafbfc}.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#eef2f6}
.critical,.failed,.rejected,.rolled_back{background:#fee4e2;color:#b42318}.warning,.canary{background:#fef0c7;color:#b54708}
.ok,.passed,.production,.stable,.blessed{background:#d1fadf;color:#027a48}.info,.candidate,.archived{background:#eef2f6}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:8px}.card{border:1px solid var(--line);border-radius:8px;
  padding:10px 14px;min-width:150px}.card .k{color:var(--muted);font-size:12px}.card .v{font-size:20px;font-weight:600}
.muted{color:var(--muted)}code,pre{font:12px ui-monospace,monospace}pre{background:var(--head);padding:10px;
  border-radius:6px;white-space:pre-wrap}form.inline{display:inline}.actions{margin:12px 0;padding:12px;
  border:1px solid var(--line);border-radius:8px;background:var(--head)}
button{font:inherit;padding:4px 12px;border-radius:6px;border:1px solid #9aa5b1;background:#fff;cursor:pointer}
button.danger{border-color:#b42318;color:#b42318}select,input{font:inherit;padding:3px 6px}
.params span{display:inline-block;margin:0 6px 2px 0}"""


# ---------------------------------------------------------------- HTML helpers


def e(value: Any) -> str:
    """Escape anything for HTML text and attributes."""
    return html.escape("" if value is None else str(value), quote=True)


# The UI shows the view in an iframe sandboxed without `allow-top-navigation` (and without modals),
# so a link cannot take the whole window to an Airflow page. The view is same-origin, so it asks
# the UI's own router instead: push the path on the top window's history and let it re-render.
# Without a parent (the view opened alone) links behave as plain links.
TOP_LINKS = """document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-airflow]");
  if (!a || window.top === window || event.button !== 0 || event.ctrlKey || event.metaKey) return;
  try {
    const history = window.top.history;
    history.pushState({usr: null, key: Math.random().toString(36).slice(2), idx: (history.state?.idx ?? 0) + 1},
                      "", a.getAttribute("href"));
    window.top.dispatchEvent(new PopStateEvent("popstate", {state: history.state}));
    event.preventDefault();
  } catch (err) { /* not same-origin: follow the link inside the frame */ }
});"""


def page(title: str, body: str, active: str = "", subtitle: str = "", head: str = "") -> str:
    nav = "".join(f'<a href="{PREFIX}/{key}"{" class=on" if key == active else ""}>{e(name)}</a>'
                  for key, name in PAGES.items())  # fmt: skip
    sub = f'<p class="muted">{subtitle}</p>' if subtitle else ""
    return (f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>{e(title)} · nightshift ML Ops</title>"
            f"<style>{STYLE}</style><script>{TOP_LINKS}</script>{head}</head><body><header><nav>{nav}</nav></header>"
            f"<main><h1>{e(title)}</h1>{sub}{body}</main></body></html>")  # fmt: skip


def table(headers: list[str], rows: list[list[str]], empty: str = "none yet") -> str:
    """`rows` hold already-escaped cell HTML."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    body = body or f"<tr><td colspan={len(headers)} class=muted>{e(empty)}</td></tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def safe_href(href: str | None) -> str | None:
    """Only relative paths and http(s) URLs become links; anything else (javascript:, data:, file:) does not."""
    if not href:
        return None
    if href.startswith("/") and not href.startswith("//"):
        return href
    return href if urlsplit(href).scheme in ("http", "https") else None


def link(href: str | None, text: Any, top: bool = False, css: str = "") -> str:
    """An escaped link; `top` marks a page of Airflow's own UI, which `TOP_LINKS` opens in the whole window."""
    safe = safe_href(href)
    if not safe:
        return e(text)
    return f'<a href="{e(safe)}"{" data-airflow" if top else ""}{f" class={css}" if css else ""}>{e(text)}</a>'


def badge(value: Any, kind: str | None = None) -> str:
    return f'<span class="badge {e(kind or value)}">{e(value)}</span>'


def run_href(dag_id: str | None, run_id: str | None) -> str | None:
    if not dag_id or not run_id:
        return None
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def run_link(dag_id: str | None, run_id: str | None, text: str | None = None) -> str:
    return link(run_href(dag_id, run_id), text or run_id or "", top=True, css="run")


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


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def when(value: dt.datetime | None) -> str:
    return f"<span class=nowrap>{e(value.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M') if value else '')}</span>"


def params_html(params: dict[str, Any] | None) -> str:
    shown = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    if not shown:
        return '<span class="muted">defaults</span>'
    items = "".join(f"<span><code>{e(k)}</code>={e(v)}</span>" for k, v in shown.items())
    return f'<div class="params">{items}</div>'


def _rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(query), params or {}).mappings()]


# ---------------------------------------------------------------- runs (lineage)

RUN_HEADERS = ["queued for (UTC)", "DAG", "run", "type", "by", "form values (Params)", "produced"]


def runs(url: str, dag_id: str | None, limit: int = 100) -> list[list[str]]:
    rows = _rows(url, """
        SELECT * FROM nightshift.runs WHERE (CAST(:dag AS text) IS NULL OR dag_id = :dag)
        ORDER BY run_after DESC LIMIT :n""", {"dag": dag_id, "n": limit})  # fmt: skip
    produced = products(url, [r["run_id"] for r in rows])
    return [[
        when(r["run_after"]), e(r["dag_id"]), run_link(r["dag_id"], r["run_id"]),
        e(r["run_type"]) + upstream(r["assets"]), e(r["triggered_by"] or ""), params_html(r["params"]),
        "<br>".join(produced.get(r["run_id"], [])),
    ] for r in rows]  # fmt: skip


def upstream(events: list[dict[str, Any]] | None) -> str:
    """The asset events that started a run, each with the upstream run that produced it."""
    sources = dict.fromkeys((ev.get("name"), ev.get("source_dag_id"), ev.get("source_run_id")) for ev in events or [])
    return "".join(f"<br><span class=muted>{e(name)} from</span> {run_link(dag_id, run_id, dag_id)}"
                   for name, dag_id, run_id in sources)  # fmt: skip


def products(url: str, run_ids: list[str]) -> dict[str, list[str]]:
    """What each run produced, as links into the view: days ingested, validations, versions, deployments…"""
    if not run_ids:
        return {}
    ids = {"ids": run_ids}
    out: dict[str, list[str]] = {}

    def add(run_id: str, html_: str) -> None:
        out.setdefault(run_id, []).append(html_)

    for r in _rows(url, """SELECT run_id, count(*) AS days, sum(rows_clean) AS rows FROM nightshift.ingestion_runs
                           WHERE run_id = ANY(:ids) GROUP BY run_id""", ids):  # fmt: skip
        add(r["run_id"], f"{e(r['days'])} day(s) ingested, {e(r['rows'] or 0)} clean flights")
    for r in _rows(
        url,
        """SELECT run_id, count(*) AS n, count(*) FILTER (WHERE NOT success) AS failed
                           FROM nightshift.validation_results WHERE run_id = ANY(:ids) GROUP BY run_id""",
        ids,
    ):
        text = f"{r['n']} validation(s)" + (f", {r['failed']} failed" if r["failed"] else ", all passed")
        add(r["run_id"], link(view_href("validations", run_id=r["run_id"]), text))
    for r in _rows(url, "SELECT run_id, version, status FROM nightshift.model_versions WHERE run_id = ANY(:ids)", ids):
        add(r["run_id"], link(view_href(f"versions/{r['version']}"), f"model version {r['version']}") + " "
            + badge(r["status"]))  # fmt: skip
    for r in _rows(url, """SELECT run_id, version, action, succeeded FROM nightshift.deployments
                           WHERE run_id = ANY(:ids) ORDER BY id""", ids):  # fmt: skip
        outcome = badge("ok") if r["succeeded"] else badge("failed")
        add(r["run_id"], link(view_href("deployments"), f"{r['action']} v{r['version']}") + " " + outcome)
    for r in _rows(url, """SELECT run_id, count(DISTINCT partition_date) AS days FROM nightshift.drift_reports
                           WHERE run_id = ANY(:ids) GROUP BY run_id""", ids):  # fmt: skip
        add(r["run_id"], link(view_href("drift"), f"{r['days']} day(s) of drift reports"))
    for r in _rows(url, "SELECT run_id, count(*) AS n FROM nightshift.alerts WHERE run_id = ANY(:ids) GROUP BY run_id",
                   ids):  # fmt: skip
        add(r["run_id"], link(view_href("alerts", run_id=r["run_id"]), f"{r['n']} alert(s)"))
    return out


# ---------------------------------------------------------------- model versions

VERSION_HEADERS = ["version", "status", "serving", "registered (UTC)", "AUC", "vs GBDT", "gate", "training run"]


def _labels_of(state: Any) -> dict[int, list[str]]:
    labels: dict[int, list[str]] = {}
    for label, version in (getattr(state, "labels", None) or {}).items():
        labels.setdefault(int(version), []).append(label)
    return labels


def versions(url: str, state: Any, limit: int = 100) -> list[list[str]]:
    rows = _rows(url, "SELECT * FROM nightshift.model_versions ORDER BY version DESC LIMIT :n", {"n": limit})
    checks = _rows(url, "SELECT version, name, passed FROM nightshift.gate_checks")
    labels = _labels_of(state)
    by_version: dict[int, list[dict[str, Any]]] = {}
    for c in checks:
        by_version.setdefault(c["version"], []).append(c)

    def gate(version: int) -> str:
        done = by_version.get(version, [])
        failed = [c["name"] for c in done if not c["passed"]]
        if not done:
            return '<span class="muted">not run</span>'
        return badge(f"{len(done) - len(failed)}/{len(done)} passed", "failed" if failed else "passed") + (
            " " + e(", ".join(failed)) if failed else "")  # fmt: skip

    return [[
        link(view_href(f"versions/{r['version']}"), f"v{r['version']}"), badge(r["status"]),
        " ".join(badge(label, "stable" if label == "stable" else "canary") for label in labels.get(r["version"], [])),
        when(r["created_at"]), f"<span class=num>{e(fmt(r['metrics'].get('auc')))}</span>",
        f"<span class=num>{e(fmt(r['metrics'].get('auc_ratio'), 3))}×</span>", gate(r["version"]),
        run_link(r["dag_id"], r["run_id"]),
    ] for r in rows]  # fmt: skip


def version_detail(url: str, version: int, state: Any, lake_uri: str) -> str | None:
    """The version's page body: metrics, gate checks, serving, lineage and the run's form values."""
    found = _rows(url, "SELECT * FROM nightshift.model_versions WHERE version = :v", {"v": version})
    if not found:
        return None
    v = found[0]
    metrics = v["metrics"]
    labels = _labels_of(state).get(version, [])
    cards = "".join(f'<div class="card"><div class="k">{e(k)}</div><div class="v">{v_}</div></div>' for k, v_ in [
        ("status", badge(v["status"])), ("serving as", " ".join(badge(x, x) for x in labels) or "—"),
        ("ROC-AUC", e(fmt(metrics.get("auc")))), ("GBDT baseline AUC", e(fmt(metrics.get("gbdt_auc")))),
        ("ECE", e(fmt(metrics.get("ece")))), ("Brier", e(fmt(metrics.get("brier")))),
    ])  # fmt: skip
    scalar = sorted((k, m) for k, m in metrics.items() if isinstance(m, int | float))
    metric_rows = [[f"<code>{e(k)}</code>", f"<span class=num>{e(fmt(float(m)))}</span>"] for k, m in scalar]
    checks = _rows(url, "SELECT * FROM nightshift.gate_checks WHERE version = :v ORDER BY kind, name", {"v": version})
    check_rows = [[
        e(c["name"]), e(c["kind"]), badge("passed") if c["passed"] else badge("failed"),
        f"<span class=num>{e(fmt(c['observed']))}</span>", f"<span class=num>{e(fmt(c['threshold']))}</span>",
        e(c["detail"]),
    ] for c in checks]  # fmt: skip
    deployed = _rows(url, "SELECT * FROM nightshift.deployments WHERE version = :v ORDER BY id DESC", {"v": version})
    validation_ids = list(v["validation_run_ids"] or [])
    ingest_ids = list(v["ingestion_run_ids"] or [])
    window = v["data_window"] or {}
    lineage = [
        ["training run", run_link(v["dag_id"], v["run_id"])],
        ["form values", params_html(v["params"])],
        ["dataset", f"<code>{e(v['dataset_uri'])}</code> "
         + link(file_href(v["dataset_uri"].rstrip("/") + "/manifest.json", lake_uri), "manifest")],
        ["dataset SHA-256", f"<code>{e(v['dataset_sha256'])}</code>"],
        ["data window", e(", ".join(f"{k} {w}" for k, w in window.items()))],
        ["features", f"Feast FeatureService <code>{e(v['feature_service'])}</code>, registry version "
         f"<code>{e(v['feast_registry_version'])}</code>"],
        ["ingestion runs", ", ".join(run_link("nightshift_ingest", r) for r in ingest_ids) or "none"],
        ["validation runs", ", ".join(link(view_href("validations", run_id=r), r) for r in validation_ids) or "none"],
        ["code version", f"<code>{e(v['code_version'])}</code>"],
        ["evaluation report", link(file_href(v["report_uri"], lake_uri), "ROC / PR / calibration / slices")],
        ["SavedModel", f"<code>{e(v['artifact_uri'])}</code>"],
    ]  # fmt: skip
    return (
        f'<div class="cards">{cards}</div>'
        + (f"<p>{e(v['gate_note'])}</p>" if v["gate_note"] else "")
        + "<h2>Gate checks</h2>" + table(["check", "kind", "result", "observed", "threshold", "detail"], check_rows)
        + "<h2>Lineage</h2>" + table(["", ""], lineage)
        + "<h2>Deployments</h2>" + table(DEPLOYMENT_HEADERS, [_deployment_row(d) for d in deployed])
        + "<h2>Test metrics</h2>" + table(["metric", "value"], metric_rows)
        + "<h2>Hyperparameters</h2><pre>" + e(json.dumps(v["hyperparameters"], indent=2, default=str)) + "</pre>"
    )  # fmt: skip


# ---------------------------------------------------------------- deployments

DEPLOYMENT_HEADERS = ["when (UTC)", "version", "action", "outcome", "stable after", "canary after", "reason", "run"]


def _deployment_row(r: dict[str, Any]) -> list[str]:
    return [
        when(r["created_at"]), link(view_href(f"versions/{r['version']}"), f"v{r['version']}"), e(r["action"]),
        badge("ok") if r["succeeded"] else badge("failed"), e(fmt(r["stable_version"])),
        e(fmt(r["canary_version"])), e(r["reason"]), run_link(r["dag_id"], r["run_id"]),
    ]  # fmt: skip


def deployments(url: str, limit: int = 100) -> list[list[str]]:
    rows = _rows(url, "SELECT * FROM nightshift.deployments ORDER BY id DESC LIMIT :n", {"n": limit})
    return [_deployment_row(r) for r in rows]


def confirm_action(action: str, version: int | None, state: Any, rollback_target: int | None) -> str:
    """What the action will do, in words, with the button that does it (POST, same origin)."""
    stable = getattr(state, "stable", None)
    if action == "rollback":
        target = version or rollback_target
        what = (f"<code>stable</code> moves from v{e(stable)} back to <b>v{e(target)}</b>, the version it replaced; "
                f"v{e(stable)} becomes <i>rolled_back</i> and stays loaded for the grace period."
                if stable and target else
                "There is nothing to roll back to: no earlier version served as <code>stable</code>.")  # fmt: skip
    else:
        what = (f"<b>v{e(version)}</b> is pushed, validated on the server and tried as <code>canary</code> next to "
                f"stable v{e(stable)}; it becomes <code>stable</code> only when healthy.")  # fmt: skip
    if action == "rollback" and not (stable and (version or rollback_target)):
        return f"<p>{what}</p><p>{link(view_href('deployments'), 'back to deployments')}</p>"
    hidden = f'<input type="hidden" name="version" value="{e(version)}">' if version else ""
    return (f"<p>{what}</p><form method=post action={PREFIX}/actions>"
            f'<input type="hidden" name="action" value="{e(action)}">{hidden}'
            f'<button class="danger" type="submit">Confirm {e(action)}</button> &nbsp; '
            f'{link(view_href("deployments"), "cancel")}</form>')  # fmt: skip


def requested_run(action: str, run: dict[str, Any]) -> str:
    """The banner after an action: the deploy run it triggered, followed until it ends."""
    state = run.get("state") or "queued"
    kind = {"success": "ok", "failed": "failed"}.get(state, "info")
    follow = "" if state in ("success", "failed") else " The page refreshes until the run ends."
    return (f'<div class="actions">{e(action.title())} requested as {e(run.get("triggering_user_name") or "you")}: '
            f"{run_link(run.get('dag_id'), run.get('dag_run_id'))} {badge(state, kind)}.{follow}</div>")  # fmt: skip


def promotable_versions(url: str) -> list[int]:
    """Versions a promote may name: blessed, or served before (archived / rolled back)."""
    rows = _rows(
        url,
        """SELECT version FROM nightshift.model_versions
                         WHERE status IN ('blessed', 'archived', 'rolled_back', 'canary') ORDER BY version DESC""",
    )
    return [r["version"] for r in rows]


def serving_now(model: str, state: Any, can_act: bool, promotable: list[int]) -> str:
    stable, canary = getattr(state, "stable", None), getattr(state, "canary", None)
    cards = "".join(f'<div class="card"><div class="k">{e(k)}</div><div class="v">{v}</div></div>' for k, v in [
        ("model", e(model)),
        ("stable", link(view_href(f"versions/{stable}"), f"v{stable}") if stable else "—"),
        ("canary", link(view_href(f"versions/{canary}"), f"v{canary}") if canary else "—"),
        ("loaded versions", e(", ".join(f"v{x}" for x in getattr(state, "versions", []) or []) or "—")),
    ])  # fmt: skip
    if not can_act:
        actions = ('<p class="muted">Read-only: promote and roll back need the <b>op</b> or <b>admin</b> '
                   "role.</p>")  # fmt: skip
    else:
        options = "".join(f'<option value="{e(v)}">v{e(v)}</option>' for v in promotable)
        actions = (
            '<div class="actions"><b>On-call actions</b> trigger <code>nightshift_deploy</code> '
            "through Airflow's API as you, after you confirm.<br><br>"
            f'<form class="inline" method="get" action="{PREFIX}/actions/confirm">'
            '<input type="hidden" name="action" value="rollback">'
            '<button class="danger" type="submit">Roll back stable…</button></form> &nbsp; '
            f'<form class="inline" method="get" action="{PREFIX}/actions/confirm">'
            '<input type="hidden" name="action" value="promote">'
            f'<label>version <select name="version" required>{options}</select></label> '
            '<button type="submit">Promote…</button></form></div>'
        )  # fmt: skip
    return f'<div class="cards">{cards}</div>{actions}'


# ---------------------------------------------------------------- validations

VALIDATION_HEADERS = ["day", "suite", "result", "expectations", "critical failed", "warnings", "what failed",
                      "Data Docs", "run"]  # fmt: skip


def validations(url: str, lake_uri: str, run_id: str | None, day: dt.date | None, limit: int = 100) -> list[list[str]]:
    rows = _rows(url, """
        SELECT v.*, i.dag_id FROM nightshift.validation_results v
        LEFT JOIN (SELECT DISTINCT run_id, dag_id FROM nightshift.ingestion_runs) i USING (run_id)
        WHERE (CAST(:run AS text) IS NULL OR v.run_id = :run) AND (CAST(:day AS date) IS NULL OR partition_date = :day)
        ORDER BY partition_date DESC, suite LIMIT :n""", {"run": run_id, "day": day, "n": limit})  # fmt: skip
    return [[
        f"<span class=nowrap>{e(r['partition_date'])}</span>", e(r["suite"]),
        badge("passed") if r["success"] else badge("failed"),
        f"<span class=num>{e(r['evaluated'])}</span>", f"<span class=num>{e(r['critical_failed'])}</span>",
        f"<span class=num>{e(r['warning_failed'])}</span>",
        e("; ".join(str(f.get("expectation", f)) if isinstance(f, dict) else str(f) for f in r["failures"][:3])),
        link(file_href(r["docs_uri"], lake_uri), "Data Docs"),
        run_link(r["dag_id"] or "nightshift_ingest", r["run_id"]),
    ] for r in rows]  # fmt: skip


# ---------------------------------------------------------------- drift

DRIFT_HEADERS = ["day", "model", "flights", "drift share", "AUC", "crossed", "drifted inputs", "report"]


def drift_series(url: str, days: int = 90) -> list[dict[str, Any]]:
    return _rows(
        url,
        """
        SELECT partition_date AS day,
               max(value) FILTER (WHERE metric = 'drift_share') AS drift_share,
               max(value) FILTER (WHERE metric = 'auc') AS auc,
               bool_or(crossed) FILTER (WHERE metric <> 'retrain_requested') AS crossed,
               array_remove(array_agg(feature ORDER BY value DESC)
                            FILTER (WHERE crossed AND metric = 'feature_drift'), NULL)
                   AS drifted,
               max(report_uri) AS report, max(model_version) AS model_version, max(rows) AS rows
        FROM nightshift.drift_reports GROUP BY partition_date ORDER BY partition_date DESC LIMIT :n""",
        {"n": days},
    )


def drift_chart(series: list[dict[str, Any]], width: int = 760, height: int = 220) -> str:
    """An inline SVG of drift share and ROC-AUC by day (oldest left), both on a 0…1 axis."""
    points = [s for s in reversed(series) if s["drift_share"] is not None]
    if len(points) < 2:
        return '<p class="muted">The chart needs two monitored days.</p>'
    left, right, top, bottom = 36, 24, 24, 28
    step = (width - left - right) / (len(points) - 1)

    def x(i: int) -> float:
        return left + i * step

    def y(value: float) -> float:
        return top + (1 - value) * (height - top - bottom)

    grid = "".join(f'<line x1="{left}" x2="{width - right}" y1="{y(g):.1f}" y2="{y(g):.1f}" stroke="#e4e7eb"/>'
                   f'<text x="{left - 6}" y="{y(g) + 4:.1f}" font-size="10" text-anchor="end" fill="#52606d">'
                   f"{g:g}</text>" for g in (0, 0.25, 0.5, 0.75, 1.0))  # fmt: skip

    def series_svg(key: str, color: str) -> str:
        kept = [(i, p[key]) for i, p in enumerate(points) if p[key] is not None]
        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in kept)
        dots = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"><title>'
                       f"{e(points[i]['day'])} {e(key)} {v:.3f}</title></circle>" for i, v in kept)  # fmt: skip
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>{dots}'

    every = max(1, len(points) // 12)
    labels = "".join(f'<text x="{x(i):.1f}" y="{height - 8}" font-size="10" text-anchor="middle" fill="#52606d">'
                     f"{e(p['day'].strftime('%m-%d'))}</text>"
                     for i, p in enumerate(points) if i % every == 0)  # fmt: skip
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="drift share and ROC-AUC by day">'
            f'{grid}{series_svg("drift_share", "#b54708")}{series_svg("auc", "#017cee")}{labels}'
            f'<text x="{left}" y="14" font-size="12" fill="#b54708">● drift share</text>'
            f'<text x="{left + 100}" y="14" font-size="12" fill="#017cee">● ROC-AUC</text></svg>')  # fmt: skip


def drift_rows(series: list[dict[str, Any]]) -> list[list[str]]:
    return [[
        f"<span class=nowrap>{e(s['day'])}</span>",
        link(view_href(f"versions/{s['model_version']}"), f"v{s['model_version']}"),
        f"<span class=num>{e(s['rows'])}</span>", f"<span class=num>{e(fmt(s['drift_share'], 2))}</span>",
        f"<span class=num>{e(fmt(s['auc'], 3))}</span>", badge("yes", "warning") if s["crossed"] else "no",
        e(", ".join((s["drifted"] or [])[:6]) + (" …" if len(s["drifted"] or []) > 6 else "")),
        link(view_href("drift/report", day=s["day"].isoformat()), "Evidently report"),
    ] for s in series]  # fmt: skip


def report_frame(day: dt.date, src: str, days: list[dt.date]) -> str:
    """The day's Evidently report in a frame, under the view's navigation, with the days around it."""
    earlier, later = [d for d in days if d < day], [d for d in days if d > day]
    steps = [link(view_href("drift"), "all days")]
    if earlier:
        steps.append(link(view_href("drift/report", day=max(earlier).isoformat()), f"← {max(earlier)}"))
    if later:
        steps.append(link(view_href("drift/report", day=min(later).isoformat()), f"{min(later)} →"))
    steps.append(link(src, "the report alone"))
    frame = "width:100%;height:calc(100vh - 150px);border:1px solid #e4e7eb;border-radius:8px"
    return (f"<p>{' · '.join(steps)}</p>"
            f'<iframe title="Evidently report for {e(day)}" src="{e(src)}" style="{frame}"></iframe>')  # fmt: skip


def monitored_days(url: str) -> list[dt.date]:
    return [r["d"] for r in _rows(url, "SELECT DISTINCT partition_date AS d FROM nightshift.drift_reports ORDER BY 1")]


def report_uri(url: str, day: dt.date) -> str | None:
    query = "SELECT max(report_uri) AS uri FROM nightshift.drift_reports WHERE partition_date = :d"
    rows = _rows(url, query, {"d": day})
    return rows[0]["uri"] if rows else None


# ---------------------------------------------------------------- alerts

ALERT_HEADERS = ["when (UTC)", "severity", "kind", "what happened", "source"]


def alerts(url: str, severity: str | None, kind: str | None, run_id: str | None, limit: int = 200) -> list[list[str]]:
    rows = _rows(url, """
        SELECT id, created_at, severity, kind, title, dag_id, task_id, run_id FROM nightshift.alerts
        WHERE (CAST(:severity AS text) IS NULL OR severity = :severity)
          AND (CAST(:kind AS text) IS NULL OR kind = :kind)
          AND (CAST(:run AS text) IS NULL OR run_id = :run)
        ORDER BY id DESC LIMIT :n""", {"severity": severity, "kind": kind, "run": run_id, "n": limit})  # fmt: skip
    return [[
        when(r["created_at"]), badge(r["severity"]), e(r["kind"]), link(view_href(f"alerts/{r['id']}"), r["title"]),
        run_link(r["dag_id"], r["run_id"], " / ".join(x for x in (r["dag_id"], r["task_id"]) if x) or None),
    ] for r in rows]  # fmt: skip


def alert_detail(url: str, alert_id: int, lake_uri: str) -> tuple[str, str] | None:
    found = _rows(url, "SELECT * FROM nightshift.alerts WHERE id = :id", {"id": alert_id})
    if not found:
        return None
    a = found[0]
    target, top = href_for(a["link"], lake_uri)
    delivered = [[e(channel), delivery(str(d))] for channel, d in sorted((a["deliveries"] or {}).items())]
    facts = [
        ["when (UTC)", when(a["created_at"])], ["severity", badge(a["severity"])], ["kind", e(a["kind"])],
        ["look here", link(target, "open", top=top) if target else e(a["link"] or "")],
        ["source", run_link(a["dag_id"], a["run_id"], " / ".join(x for x in (a["dag_id"], a["task_id"]) if x))],
        ["deduplication key", f"<code>{e(a['dedup_key'])}</code>"],
    ]  # fmt: skip
    body = (table(["", ""], facts) + "<h2>Message</h2><pre>" + e(a["message"]) + "</pre>"
            + "<h2>Delivery</h2>" + table(["channel", "result"], delivered))  # fmt: skip
    return a["title"], body


def delivery(result: str) -> str:
    """A channel's outcome without its details: a webhook URL or a mail server's reply can carry secrets."""
    if result.startswith(("sent", "posted")):
        return badge("delivered", "ok")
    if result.startswith("skipped"):
        return badge("not configured", "info")
    reason = result.split(":")[1].strip() if result.count(":") >= 2 else ""
    return badge("failed", "failed") + (f" <code>{e(reason)}</code>" if reason.isidentifier() else "")


def alert_kinds(url: str) -> list[str]:
    return [r["kind"] for r in _rows(url, "SELECT DISTINCT kind FROM nightshift.alerts ORDER BY kind")]
