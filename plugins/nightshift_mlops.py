"""The ML Ops view: runs, model versions, deployments, validations, drift and alerts, inside the Airflow UI.

A FastAPI app mounted by Airflow's API server at `/mlops`, behind Airflow's own auth: no token
gives 401; any role that may view plugins can read; promote and rollback need the right to
manage the `serving_deploy` pool (op and admin), and they only ever trigger `nightshift_deploy`
through Airflow's REST API with the caller's own token — the view writes no state itself.
Linked as "ML Ops" in the navigation, and as a tab on every DAG (that DAG's runs and products).
"""

from __future__ import annotations

import datetime as dt
import mimetypes
from typing import Annotated
from urllib.parse import quote, urlencode, urlsplit

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, PoolDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from include.mlops.views import PREFIX  # light: the page helpers import nothing heavy

DEPLOY_DAG = "nightshift_deploy"
ACTIONS = ("promote", "rollback")

app = FastAPI(title="nightshift ML Ops", dependencies=[Depends(requires_access_view(AccessView.PLUGINS))],
              docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip


def _settings():
    from include.core.config import load_settings

    return load_settings()


def _url() -> str:
    return _settings().require_database_url()


def can_operate(user) -> bool:
    """op and admin may promote and roll back: SimpleAuthManager lets them edit pools, user and viewer not."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().is_authorized_pool(method="PUT", details=PoolDetails(name="serving_deploy"), user=user)


def requires_serving_operator(request: Request, user: GetUserDep) -> None:
    if not can_operate(user):
        raise HTTPException(403, "promote and rollback need the op or admin role")
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    if origin and urlsplit(origin).netloc != request.url.netloc:
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
    from include.mlops import views as mlops

    dag_id = dag_id or None
    title = f"Runs of {dag_id}" if dag_id else "Runs"
    subtitle = ("Each run's form values (Params) and what it produced: the lineage from an analyst's input to "
                "every partition, validation, model version, deployment, drift report and alert.")  # fmt: skip
    return _html(mlops.page(title, mlops.table(mlops.RUN_HEADERS, mlops.runs(_url(), dag_id)), "runs", subtitle))


@app.get("/versions", response_class=HTMLResponse)
def versions_page() -> HTMLResponse:
    from include.mlops import views as mlops
    from include.serving.state import read_state

    rows = mlops.versions(_url(), read_state(_settings()))
    return _html(mlops.page("Model versions", mlops.table(mlops.VERSION_HEADERS, rows), "versions"))


@app.get("/versions/{version}", response_class=HTMLResponse)
def version_page(version: int) -> HTMLResponse:
    from include.mlops import views as mlops
    from include.serving.state import read_state

    settings = _settings()
    body = mlops.version_detail(_url(), version, read_state(settings), settings.lake_uri)
    if body is None:
        raise HTTPException(404, f"no model version {version}")
    return _html(mlops.page(f"Model version {version}", body, "versions"))


@app.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request, user: GetUserDep, requested: str | None = None) -> HTMLResponse:
    from include.mlops import views as mlops
    from include.serving.state import read_state

    settings = _settings()
    banner, refresh = "", ""
    if requested:
        run = _airflow_api(request, "GET", f"/dags/{DEPLOY_DAG}/dagRuns/{quote(requested, safe='')}")
        if run.status_code == 200:
            banner = mlops.requested_run(run.json()["conf"].get("action", "deploy"), run.json())
            refresh = "" if run.json()["state"] in ("success", "failed") else "<meta http-equiv=refresh content=3>"
    now = mlops.serving_now(settings.model_name, read_state(settings), can_operate(user),
                            mlops.promotable_versions(_url()))  # fmt: skip
    history = mlops.table(mlops.DEPLOYMENT_HEADERS, mlops.deployments(_url()))
    return _html(mlops.page("Deployments", banner + now + "<h2>History</h2>" + history, "deployments", head=refresh))


@app.get("/validations", response_class=HTMLResponse)
def validations_page(run_id: str | None = None, day: dt.date | None = None) -> HTMLResponse:
    from include.mlops import views as mlops

    rows = mlops.validations(_url(), _settings().lake_uri, run_id or None, day)
    scope = f" of run {run_id}" if run_id else (f" of {day}" if day else "")
    subtitle = "Great Expectations suites per day; Data Docs show every expectation with what was observed."
    return _html(
        mlops.page(f"Validations{scope}", mlops.table(mlops.VALIDATION_HEADERS, rows), "validations", subtitle)
    )


@app.get("/drift", response_class=HTMLResponse)
def drift_page() -> HTMLResponse:
    from include.mlops import views as mlops

    series = mlops.drift_series(_url())
    body = mlops.drift_chart(series) + mlops.table(mlops.DRIFT_HEADERS, mlops.drift_rows(series))
    subtitle = "Evidently data drift of the model's inputs and quality on the day's landed flights, per day."
    return _html(mlops.page("Drift and quality by day", body, "drift", subtitle))


@app.get("/drift/report", response_class=HTMLResponse)
def drift_report(day: Annotated[dt.date, Query()]) -> HTMLResponse:
    from include.mlops import views as mlops

    uri = mlops.report_uri(_url(), day)
    src = mlops.file_href(uri, _settings().lake_uri)
    if not src:
        raise HTTPException(404, f"no drift report for {day}")
    body = mlops.report_frame(day, src, mlops.monitored_days(_url()))
    return _html(mlops.page(f"Evidently report for {day}", body, "drift"))


@app.get("/alerts", response_class=HTMLResponse)
def alerts_page(severity: str | None = None, kind: str | None = None, run_id: str | None = None) -> HTMLResponse:
    from include.core.alerts import SEVERITIES
    from include.mlops import views as mlops

    severity, kind, run_id = severity or None, kind or None, run_id or None
    if severity is not None and severity not in SEVERITIES:
        raise HTTPException(400, f"severity must be one of {', '.join(SEVERITIES)}")
    kinds = mlops.alert_kinds(_url())

    def options(values, chosen):
        return "".join(f'<option value="{mlops.e(v)}"{" selected" if v == chosen else ""}>{mlops.e(v) or "any"}'
                       "</option>" for v in ["", *values])  # fmt: skip

    form = (f'<form method="get">severity <select name="severity">{options(SEVERITIES, severity)}</select> '
            f'kind <select name="kind">{options(kinds, kind)}</select> '
            + (f'<input type="hidden" name="run_id" value="{mlops.e(run_id)}">' if run_id else "")
            + "<button>Filter</button></form>")  # fmt: skip
    rows = mlops.alerts(_url(), severity, kind, run_id)
    return _html(mlops.page("Alerts", form + mlops.table(mlops.ALERT_HEADERS, rows), "alerts"))


@app.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(alert_id: int) -> HTMLResponse:
    from include.mlops import views as mlops

    found = mlops.alert_detail(_url(), alert_id, _settings().lake_uri)
    if found is None:
        raise HTTPException(404, f"no alert {alert_id}")
    title, body = found
    return _html(mlops.page(title, body, "alerts"))


@app.get("/files/{path:path}")
def lake_file(path: str) -> Response:
    """A report or manifest from the lake (Data Docs, evaluation, Evidently); nothing else is served."""
    from include.core.lake import lake_root
    from include.mlops import views as mlops

    if not mlops.servable(path):
        raise HTTPException(404, "not a report")
    target = lake_root(_settings()) / path
    if not target.is_file():
        raise HTTPException(404, f"{path} is not in the lake")
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    # Reports carry data values and their own scripts: they run in an opaque origin, never with
    # Airflow's cookies or API (the CSP sandbox), yet may draw their charts (allow-scripts).
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox allow-scripts"}
    return Response(target.read_bytes(), media_type=media, headers=headers)


def _airflow_api(request: Request, method: str, path: str, **kwargs):
    """Airflow's REST API on this same server, called with the caller's own token (cookie or header)."""
    import httpx

    token = request.cookies.get("_token") or request.headers.get("authorization", "").removeprefix("Bearer ")
    return httpx.request(method, f"{str(request.base_url).rstrip('/')}/api/v2{path}",
                         headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs)  # fmt: skip


def _check_action(action: str, version: int | None) -> None:
    if action not in ACTIONS:
        raise HTTPException(400, "action must be promote or rollback")
    if action == "promote" and version is None:
        raise HTTPException(400, "promote needs a version")


@app.get("/actions/confirm", response_class=HTMLResponse, dependencies=[Depends(requires_serving_operator)])
def confirm(action: str, version: int | None = None) -> HTMLResponse:
    """What promote or rollback will do, before it is done (the UI's iframe cannot show a confirm dialog)."""
    from include.mlops import views as mlops
    from include.serving.state import read_state
    from include.train.registry import previous_stable

    _check_action(action, version)
    settings = _settings()
    state = read_state(settings)
    target = previous_stable(_url(), settings.model_name, state.stable) if state.stable else None
    body = mlops.confirm_action(action, version, state, target)
    verb = {"rollback": "Roll back", "promote": "Promote"}[action]
    return _html(mlops.page(f"{verb} {settings.model_name}?", body, "deployments"))


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


class NightshiftMlopsPlugin(AirflowPlugin):
    name = "nightshift_mlops"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "nightshift ML Ops"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {"name": "ML Ops", "href": f"{PREFIX}/deployments", "destination": "nav", "url_route": "mlops",
         "nav_top_level": True, "icon": f"{PREFIX}/icon.svg"},
        {"name": "ML Ops", "href": f"{PREFIX}/runs?dag_id={{DAG_ID}}", "destination": "dag", "url_route": "mlops-dag"},
    ]  # fmt: skip
