"""The ML Ops view: model versions, deployments, validations, drift and alerts, inside the Airflow UI.

A FastAPI app mounted by Airflow's API server at `/mlops`, behind Airflow's own auth: no token
gives 401; any role that may view plugins can read; promote and rollback need the right to
manage the `serving_deploy` pool (op and admin), and they only ever trigger `nightshift_deploy`
through Airflow's REST API with the caller's own token — the view writes no state itself.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated
from urllib.parse import urlsplit

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, PoolDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

PREFIX = "/mlops"
DEPLOY_DAG = "nightshift_deploy"

app = FastAPI(title="nightshift ML Ops", dependencies=[Depends(requires_access_view(AccessView.PLUGINS))],
              docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip


def _url() -> str:
    from include.config import load_settings

    return load_settings().require_database_url()


def _base_url() -> str:
    return os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")


def requires_serving_operator(request: Request, user: GetUserDep) -> None:
    from airflow.api_fastapi.app import get_auth_manager

    allowed = get_auth_manager().is_authorized_pool(method="PUT", details=PoolDetails(name="serving_deploy"), user=user)
    if not allowed:
        raise HTTPException(403, "promote and rollback need the op or admin role")
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    if origin and urlsplit(origin).netloc != request.url.netloc:
        raise HTTPException(403, "cross-site request refused")


@app.get("/", response_class=HTMLResponse)
def overview() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/deployments")


@app.get("/versions", response_class=HTMLResponse)
def versions_page() -> str:
    from include import mlops

    rows = mlops.versions(_url(), _base_url())
    return mlops.page("Model versions", mlops.table(mlops.VERSION_HEADERS, rows), PREFIX)


@app.get("/deployments", response_class=HTMLResponse)
def deployments_page() -> str:
    from include import mlops
    from include.config import load_settings
    from include.deploy import read_state

    state = read_state(load_settings())
    now = (f"<p>Serving <b>{mlops.e(load_settings().model_name)}</b>: stable = version "
           f"<b>{mlops.e(state.stable)}</b>, canary = <b>{mlops.e(state.canary)}</b>, "
           f"loaded {mlops.e(state.versions)}</p>"
           f'<form class="inline" method="post" action="{PREFIX}/actions">'
           '<input type="hidden" name="action" value="rollback"><button>Roll back stable</button></form> '
           f'<form class="inline" method="post" action="{PREFIX}/actions"><input type="hidden" name="action" '
           'value="promote">version <input name="version" size="4" required> '
           "<button>Promote</button></form>")  # fmt: skip
    history = mlops.table(mlops.DEPLOYMENT_HEADERS, mlops.deployments(_url(), _base_url()))
    return mlops.page("Deployments", now + "<h2>History</h2>" + history, PREFIX)


@app.get("/validations", response_class=HTMLResponse)
def validations_page() -> str:
    from include import mlops

    return mlops.page("Validations", mlops.table(mlops.VALIDATION_HEADERS, mlops.validations(_url())), PREFIX)


@app.get("/drift", response_class=HTMLResponse)
def drift_page() -> str:
    from include import mlops

    series = mlops.drift_series(_url())
    body = mlops.drift_chart(series) + mlops.table(mlops.DRIFT_HEADERS, mlops.drift_rows(series, PREFIX))
    return mlops.page("Drift and quality by day", body, PREFIX)


@app.get("/drift/report", response_class=HTMLResponse)
def drift_report(day: Annotated[dt.date, Query()]) -> str:
    from airflow.sdk import ObjectStoragePath

    from include import mlops

    uri = mlops.report_uri(_url(), day)
    if not uri:
        raise HTTPException(404, f"no drift report for {day}")
    return ObjectStoragePath(uri).read_text()


@app.get("/alerts", response_class=HTMLResponse)
def alerts_page(severity: str | None = None, kind: str | None = None) -> str:
    from include import mlops
    from include.alerts import SEVERITIES

    severity = severity or None
    kind = kind or None
    if severity is not None and severity not in SEVERITIES:
        raise HTTPException(400, f"severity must be one of {', '.join(SEVERITIES)}")
    kinds = mlops.alert_kinds(_url())
    options = lambda values, chosen: "".join(  # noqa: E731
        f'<option value="{mlops.e(v)}"{" selected" if v == chosen else ""}>{mlops.e(v) or "any"}</option>'
        for v in ["", *values]
    )
    form = (f'<form method="get">severity <select name="severity">{options(SEVERITIES, severity)}</select> '
            f'kind <select name="kind">{options(kinds, kind)}</select> <button>Filter</button></form>')  # fmt: skip
    rows = mlops.alerts(_url(), severity, kind)
    return mlops.page("Alerts", form + mlops.table(mlops.ALERT_HEADERS, rows), PREFIX)


@app.post("/actions", dependencies=[Depends(requires_serving_operator)])
def act(request: Request, action: Annotated[str, Form()], version: Annotated[int | None, Form()] = None):
    """Promote or roll back by triggering `nightshift_deploy` through Airflow's API, as the caller."""
    import httpx

    if action not in ("promote", "rollback"):
        raise HTTPException(400, "action must be promote or rollback")
    token = request.cookies.get("_token") or request.headers.get("authorization", "").removeprefix("Bearer ")
    response = httpx.post(
        f"{str(request.base_url).rstrip('/')}/api/v2/dags/{DEPLOY_DAG}/dagRuns",
        json={"logical_date": None, "conf": {"action": action, "version": version},
              "note": f"{action} from the ML Ops view"},
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )  # fmt: skip
    if response.status_code >= 400:
        raise HTTPException(response.status_code, f"Airflow refused the run: {response.text[:300]}")
    run_id = response.json()["dag_run_id"]
    return RedirectResponse(f"/dags/{DEPLOY_DAG}/runs/{run_id}", status_code=303)


class NightshiftMlopsPlugin(AirflowPlugin):
    name = "nightshift_mlops"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "nightshift ML Ops"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {"name": "ML Ops", "href": f"{PREFIX}/deployments", "destination": "nav", "category": "browse",
         "url_route": "mlops"},
        {"name": "ML Ops", "href": f"{PREFIX}/deployments", "destination": "dag", "url_route": "mlops-dag"},
    ]  # fmt: skip
