"""The ML Ops view's FastAPI app: runs, model versions, deployments, validations, drift and alerts.

Mounted by Airflow's API server at `/mlops` (see `plugins/nightshift_mlops.py`), behind Airflow's own
auth: no token gives 401; any role that may view plugins can read; promote and rollback need what
Airflow asks of whoever triggers `nightshift_deploy` (include/core/access.py), and they only ever trigger
`nightshift_deploy` through Airflow's REST API (at `[api] base_url`, never at the request's Host)
with the caller's own token — the view writes no state itself. The pages come from `include.mlops.views`.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
from typing import Annotated
from urllib.parse import quote, urlencode, urlsplit

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from include.core.assets import DEPLOY_DAG
from include.core.config import load_settings
from include.mlops import views
from include.mlops.views import PREFIX
from include.serving.state import read_state, rollback_target

ACTIONS = ("promote", "rollback")

app = FastAPI(title="nightshift ML Ops", dependencies=[Depends(requires_access_view(AccessView.PLUGINS))],
              docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip


def _settings():
    return load_settings()


def _url() -> str:
    return _settings().require_database_url()


def can_operate(user) -> bool:
    """Whoever Airflow's auth manager lets trigger `nightshift_deploy` may promote and roll back from here:
    the same question Airflow asks at `POST /api/v2/dags/nightshift_deploy/dagRuns` (include/core/access.py)."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=DEPLOY_DAG), user=user)  # fmt: skip


def api_base_url() -> str:
    """Airflow's own API server as configured (`[api] base_url`), never the request's Host header."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/") or f"http://127.0.0.1:{conf.get('api', 'port')}"


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:  # a malformed port: matches nothing
        return "", None
    return (parts.hostname or "", port)


def requires_serving_operator(request: Request, user: GetUserDep) -> None:
    if not can_operate(user):
        raise HTTPException(403, f"promote and rollback need permission to trigger {DEPLOY_DAG}")
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    if not origin:
        # A browser sends Origin with every POST; without it (or Referer) the request's source is unknown.
        if request.method not in ("GET", "HEAD"):
            raise HTTPException(403, "cross-site request refused: no Origin or Referer")
        return
    if _host_port(origin) != _host_port(api_base_url()):
        raise HTTPException(403, "cross-site request refused")


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


@app.get("/")
def overview() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/deployments")


ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2"><path d="M3 3v18h18"/><path d="M7 15l4-4 3 3 5-6"/></svg>'
)


@app.get("/icon.svg")
def icon() -> Response:
    return Response(ICON, media_type="image/svg+xml")


@app.get("/runs", response_class=HTMLResponse)
def runs_page(dag_id: str | None = None) -> HTMLResponse:
    dag_id = dag_id or None
    url = _url()
    rows = views.runs(url, dag_id)
    return _html(views.runs_page(dag_id, rows, views.products(url, [r["run_id"] for r in rows])))


@app.get("/versions", response_class=HTMLResponse)
def versions_page() -> HTMLResponse:
    url = _url()
    rows = views.versions(url)
    checks = views.gate_checks(url, [r["version"] for r in rows])
    return _html(views.versions_page(rows, checks, read_state(_settings())))


@app.get("/versions/{version}", response_class=HTMLResponse)
def version_page(version: int) -> HTMLResponse:
    settings, url = _settings(), _url()
    found = views.model_version(url, version)
    if found is None:
        raise HTTPException(404, f"no model version {version}")
    checks = views.gate_checks(url, [version]).get(version, [])
    deployed = views.deployments(url, version=version, limit=None)
    return _html(views.version_page(found, checks, deployed, read_state(settings), settings.lake_uri))


@app.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request, user: GetUserDep, requested: str | None = None) -> HTMLResponse:
    settings, url = _settings(), _url()
    run = None
    if requested:
        response = _airflow_api(request, "GET", f"/dags/{DEPLOY_DAG}/dagRuns/{quote(requested, safe='')}")
        run = response.json() if response.status_code == 200 else None
    return _html(views.deployments_page(settings.model_name, read_state(settings), can_operate(user),
                                        views.promotable_versions(url), views.deployments(url), run))  # fmt: skip


@app.get("/validations", response_class=HTMLResponse)
def validations_page(run_id: str | None = None, day: dt.date | None = None) -> HTMLResponse:
    rows = views.validations(_url(), run_id or None, day)
    return _html(views.validations_page(rows, _settings().lake_uri, run_id or None, day))


@app.get("/drift", response_class=HTMLResponse)
def drift_page() -> HTMLResponse:
    return _html(views.drift_page(views.drift_series(_url())))


@app.get("/drift/report", response_class=HTMLResponse)
def drift_report(day: Annotated[dt.date, Query()]) -> HTMLResponse:
    src = views.file_href(views.report_uri(_url(), day), _settings().lake_uri)
    if not src:
        raise HTTPException(404, f"no drift report for {day}")
    return _html(views.drift_report_page(day, src, views.monitored_days(_url())))


@app.get("/alerts", response_class=HTMLResponse)
def alerts_page(severity: str | None = None, kind: str | None = None, run_id: str | None = None) -> HTMLResponse:
    from include.core.alerts import SEVERITIES

    severity, kind, run_id = severity or None, kind or None, run_id or None
    if severity is not None and severity not in SEVERITIES:
        raise HTTPException(400, f"severity must be one of {', '.join(SEVERITIES)}")
    url = _url()
    rows = views.alerts(url, severity, kind, run_id)
    return _html(views.alerts_page(rows, list(SEVERITIES), views.alert_kinds(url), severity, kind, run_id))


@app.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(alert_id: int) -> HTMLResponse:
    found = views.alert(_url(), alert_id)
    if found is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return _html(views.alert_page(found, _settings().lake_uri))


@app.get("/predictions", response_class=HTMLResponse)
def predictions_page() -> HTMLResponse:
    from include.core.lake import lake_root

    settings, url = _settings(), _url()
    state = read_state(settings)
    share = views.canary_share(url, settings.model_name, state.canary)
    scheduled = views.scheduled_outputs(lake_root(settings))
    return _html(views.predictions_page(views.served_by_day(url), state, share, scheduled, views.health_series(url)))


@app.get("/predictions/scheduled.csv")
def scheduled_csv(day: Annotated[dt.date, Query()]) -> Response:
    """One day's batch predictions as CSV (the day is a date, so no path comes from the request)."""
    from include.core import lake

    target = lake.partition_file(lake.lake_root(_settings()), "predictions", "scheduled", day)
    if not target.exists():
        raise HTTPException(404, f"no batch predictions for {day}")
    frame = lake.read_parquet(target)
    headers = {"Content-Disposition": f'attachment; filename="predictions-{day.isoformat()}.csv"',
               "X-Content-Type-Options": "nosniff"}  # fmt: skip
    return Response(frame.to_csv(index=False), media_type="text/csv", headers=headers)


@app.get("/files/{path:path}")
def lake_file(path: str) -> Response:
    """A report or manifest from the lake (Data Docs, evaluation, Evidently); nothing else is served."""
    from include.core.lake import lake_root

    if not views.servable(path):
        raise HTTPException(404, "not a report")
    target = lake_root(_settings()) / path
    if not target.is_file():
        raise HTTPException(404, f"{path} is not in the lake")
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    # Reports carry data values and their own scripts: they run in an opaque origin, never with
    # Airflow's cookies or API (the CSP sandbox), yet may draw their charts (allow-scripts).
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox allow-scripts"}
    return Response(target.read_bytes(), media_type=media, headers=headers)


def caller_token(request: Request) -> str:
    """The caller's token as Airflow picks it: an `Authorization: Bearer` header first, then the `_token` cookie."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get("_token", "")


def _airflow_api(request: Request, method: str, path: str, **kwargs):
    """Airflow's REST API at its configured address, called with the caller's own token."""
    import httpx

    headers = {"Authorization": f"Bearer {caller_token(request)}"}
    return httpx.request(method, f"{api_base_url()}/api/v2{path}", headers=headers, timeout=30, **kwargs)


def _check_action(action: str, version: int | None) -> None:
    if action not in ACTIONS:
        raise HTTPException(400, "action must be promote or rollback")
    if action == "promote" and version is None:
        raise HTTPException(400, "promote needs a version")


@app.get("/actions/confirm", response_class=HTMLResponse, dependencies=[Depends(requires_serving_operator)])
def confirm(action: str, version: int | None = None) -> HTMLResponse:
    """What promote or rollback will do, before it is done (the UI's iframe cannot show a confirm dialog)."""
    _check_action(action, version)
    settings = _settings()
    state = read_state(settings)
    target = rollback_target(_url(), settings.model_name, state.stable) if state.stable else None
    return _html(views.confirm_page(action, version, settings.model_name, state, target))


@app.post("/actions", dependencies=[Depends(requires_serving_operator)])
def act(request: Request, action: Annotated[str, Form()], version: Annotated[int | None, Form()] = None):
    """Promote or roll back by triggering `nightshift_deploy` through Airflow's API, as the caller."""
    _check_action(action, version)
    response = _airflow_api(request, "POST", f"/dags/{DEPLOY_DAG}/dagRuns", json={
        "logical_date": None, "conf": {"action": action, "version": version},
        "note": f"{action} from the ML Ops view",
    })  # fmt: skip
    if response.status_code >= 400:
        raise HTTPException(response.status_code, f"Airflow refused the run: {response.text[:300]}")
    run_id = response.json()["dag_run_id"]
    return RedirectResponse(f"{PREFIX}/deployments?{urlencode({'requested': run_id})}", status_code=303)
