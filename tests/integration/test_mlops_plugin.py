"""The ML Ops plugin mounted in Airflow's real API app, behind Airflow's own auth (SimpleAuthManager)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from include import db
from include.core.alerts import Alert, send
from include.db import deployments, drift_reports, model_versions, retrain_requests
from include.mlops import views as mlops
from include.serving.state import rollback_target

pytestmark = pytest.mark.integration
PAGES = ["/mlops/runs", "/mlops/runs?dag_id=nightshift_ingest", "/mlops/versions", "/mlops/deployments",
         "/mlops/validations", "/mlops/drift", "/mlops/alerts"]  # fmt: skip


@pytest.fixture(scope="module")
def api(settings):
    from airflow.api_fastapi.app import create_app

    from include.ops.cli import ensure_passwords

    passwords = json.loads(ensure_passwords(settings).read_text())
    client = TestClient(create_app())

    def token(user: str) -> dict[str, str]:
        response = client.post("/auth/token", json={"username": user, "password": passwords[user]})
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    return client, token


@dataclass
class Listener:
    """A local HTTP server that records every request it gets and answers each with `reply` (JSON)."""

    url: str
    reply: dict = field(default_factory=dict)
    received: list[dict] = field(default_factory=list)


@contextmanager
def _listening(reply: dict) -> Iterator[Listener]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            listener.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "json": json.loads(body) if body else None})  # fmt: skip
            payload = json.dumps(listener.reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _record

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    listener = Listener(f"http://127.0.0.1:{server.server_address[1]}", reply)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def airflow_api(monkeypatch) -> Iterator[Listener]:
    """A stand-in for Airflow's REST API at the configured `[api] base_url`, answering with a deploy run."""
    run = {"dag_id": "nightshift_deploy", "dag_run_id": "manual__probe", "state": "running",
           "triggering_user_name": "probe-user", "conf": {"action": "rollback"}}  # fmt: skip
    with _listening(run) as listener:
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"{listener.url}/")
        yield listener


@pytest.fixture
def forged_host() -> Iterator[Listener]:
    with _listening({}) as listener:
        yield listener


def test_a_forged_host_header_sends_no_request_or_token_to_that_host(api, airflow_api, forged_host) -> None:
    client, token = api
    headers = {**token("viewer"), "Host": forged_host.url.removeprefix("http://")}
    response = client.get("/mlops/deployments?requested=manual__probe", headers=headers)
    assert response.status_code == 200
    assert forged_host.received == []
    assert [(r["method"], r["path"]) for r in airflow_api.received] == [
        ("GET", "/api/v2/dags/nightshift_deploy/dagRuns/manual__probe")
    ]
    assert airflow_api.received[0]["headers"]["Authorization"] == headers["Authorization"]
    assert "Rollback requested as probe-user" in response.text


def test_the_bearer_header_is_forwarded_before_the_token_cookie(api, airflow_api) -> None:
    client, token = api
    bearer, cookie = token("oncall"), token("viewer")["Authorization"].removeprefix("Bearer ")
    response = client.get("/mlops/deployments?requested=manual__probe",
                          headers={**bearer, "Cookie": f"_token={cookie}"})  # fmt: skip
    assert response.status_code == 200
    assert "Roll back stable" in response.text  # Airflow, too, took the caller to be oncall
    assert [r["headers"]["Authorization"] for r in airflow_api.received] == [bearer["Authorization"]]


@pytest.mark.parametrize(
    ("source", "refused"),
    [
        ({}, "cross-site request refused: no Origin or Referer"),
        ({"Origin": "https://evil.example"}, "cross-site request refused"),
        ({"Referer": "http://127.0.0.1:1/mlops/actions/confirm?action=rollback"}, "cross-site request refused"),
    ],
)
def test_an_action_from_an_unknown_or_foreign_origin_is_refused(api, airflow_api, source, refused) -> None:
    client, token = api
    response = client.post("/mlops/actions", data={"action": "rollback"}, headers={**token("oncall"), **source})
    assert response.status_code == 403
    assert response.json()["detail"] == refused
    assert airflow_api.received == []


@pytest.mark.parametrize("header", ["Origin", "Referer"])
def test_an_action_from_the_configured_origin_triggers_the_deploy_dag_as_the_caller(api, airflow_api, header) -> None:
    client, token = api
    source = airflow_api.url if header == "Origin" else f"{airflow_api.url}/mlops/actions/confirm?action=rollback"
    headers = {**token("oncall"), header: source}
    response = client.post("/mlops/actions", data={"action": "rollback"}, headers=headers, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/mlops/deployments?requested=manual__probe"
    [call] = airflow_api.received
    assert (call["method"], call["path"]) == ("POST", "/api/v2/dags/nightshift_deploy/dagRuns")
    assert call["headers"]["Authorization"] == headers["Authorization"]
    assert call["json"] == {"logical_date": None, "conf": {"action": "rollback", "version": None},
                            "note": "rollback from the ML Ops view"}  # fmt: skip


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_login(api, path: str) -> None:
    client, _ = api
    assert client.get(path).status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_a_viewer_can_read_every_page(api, path: str) -> None:
    client, token = api
    response = client.get(path, headers=token("viewer"))
    assert response.status_code == 200
    assert "<nav>" in response.text
    assert "nightshift ML Ops" in response.text


def test_a_viewer_and_an_analyst_cannot_act(api) -> None:
    client, token = api
    for user in ("viewer", "analyst"):
        response = client.post("/mlops/actions", data={"action": "rollback"}, headers=token(user))
        assert response.status_code == 403, user


def test_an_operator_gets_a_clear_error_for_a_bad_action(api, airflow_api) -> None:
    client, token = api
    headers = {**token("oncall"), "Origin": airflow_api.url}
    response = client.post("/mlops/actions", data={"action": "delete"}, headers=headers)
    assert response.status_code == 400
    assert "promote or rollback" in response.json()["detail"]
    assert airflow_api.received == []


def test_user_controlled_text_is_escaped(api, db_url) -> None:
    client, token = api
    send(db_url, Alert(kind="xss_probe", key="k", severity="info", title="<script>alert(1)</script>",
                       impact="<img src=x onerror=alert(2)>"))  # fmt: skip
    page = client.get("/mlops/alerts?kind=xss_probe", headers=token("viewer")).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    bad = client.get("/mlops/alerts?severity=<b>", headers=token("viewer"))
    assert bad.status_code == 400


def test_no_secret_is_rendered(api, settings) -> None:
    client, token = api
    passwords = json.loads((settings.local_dir / "airflow" / "passwords.json").read_text())
    for path in PAGES:
        page = client.get(path, headers=token("oncall")).text
        assert not any(pw in page for pw in passwords.values())
        assert "postgresql://" not in page


def test_only_operators_see_the_actions(api) -> None:
    client, token = api
    viewer = client.get("/mlops/deployments", headers=token("viewer")).text
    oncall = client.get("/mlops/deployments", headers=token("oncall")).text
    assert "Read-only" in viewer
    assert "Roll back stable" not in viewer
    assert "Roll back stable" in oncall
    assert client.get("/mlops/actions/confirm?action=rollback", headers=token("viewer")).status_code == 403
    confirm = client.get("/mlops/actions/confirm?action=promote&version=1", headers=token("oncall"))
    assert confirm.status_code == 200
    assert "Confirm promote" in confirm.text
    assert '<input type="hidden" name="version" value="1">' in confirm.text


def test_promote_needs_a_version(api, airflow_api) -> None:
    client, token = api
    headers = {**token("oncall"), "Origin": airflow_api.url}
    response = client.post("/mlops/actions", data={"action": "promote"}, headers=headers)
    assert response.status_code == 400
    assert "needs a version" in response.json()["detail"]
    assert airflow_api.received == []


@pytest.mark.parametrize(
    "path",
    ["/mlops/files/raw/flights/date=2013-05-01/part-0.parquet", "/mlops/files/datasets/run/train.parquet",
     "/mlops/files/reports/%2e%2e/raw/x", "/mlops/files/reports/no-such-report.html", "/mlops/versions/999999",
     "/mlops/alerts/999999", "/mlops/drift/report?day=1999-01-01"],
)  # fmt: skip
def test_what_is_not_a_report_is_not_found(api, path: str) -> None:
    client, token = api
    assert client.get(path, headers=token("viewer")).status_code == 404


def test_a_validation_s_data_docs_are_served_from_the_lake(api, settings, lake_dir) -> None:
    client, token = api
    page = lake_dir / "reports" / "data_docs" / "probe" / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<html>probe docs</html>")
    response = client.get("/mlops/files/reports/data_docs/probe/index.html", headers=token("viewer"))
    assert response.status_code == 200
    assert response.text == "<html>probe docs</html>"
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == "sandbox allow-scripts"  # no access to Airflow's origin
    assert client.get("/mlops/files/reports/data_docs/probe/index.html").status_code == 401


def test_an_alert_page_shows_the_message_but_not_the_webhook_url(api, db_url) -> None:
    client, token = api
    alert_id = send(db_url, Alert(kind="probe", key="detail", severity="warning", title="Probe <alert>",
                                  impact="what it means", link="javascript:alert(3)"))  # fmt: skip
    with db.engine(db_url).begin() as conn:
        conn.execute(
            sa.update(db.alerts).where(db.alerts.c.id == alert_id)
            .values(deliveries={"webhook": "posted to https://hooks.example/T0/SECRET (200)"})
        )  # fmt: skip
    page = client.get(f"/mlops/alerts/{alert_id}", headers=token("viewer")).text
    assert "Probe &lt;alert&gt;" in page
    assert "what it means" in page
    assert "SECRET" not in page
    assert "delivered" in page
    assert 'href="javascript' not in page


def test_the_drift_page_lists_only_drifted_inputs_and_the_day_s_retraining_request(api, db_url) -> None:
    """A day's retraining request lives in its own table; its reason shows in its own column, not as an input."""
    client, token = api
    day = dt.date(1999, 2, 1)
    common = {"partition_date": day, "model_version": 1, "rows": 900, "report_uri": "file:///x", "run_id": "probe",
              "computed_at": dt.datetime.now(dt.UTC), "threshold": 0.1}  # fmt: skip
    rows = [
        {"metric": "feature_drift", "feature": "temp", "value": 0.9, "crossed": True},
        {"metric": "feature_drift", "feature": "dewp", "value": 0.05, "crossed": False},
        {"metric": "drift_share", "feature": "", "value": 0.04, "crossed": False},
    ]
    request = {"partition_date": day, "reason": "ROC-AUC dropped on 1999-02-01 <probe>", "model_version": 1,
               "report_uri": "file:///x", "run_id": "probe", "requested_at": dt.datetime.now(dt.UTC)}  # fmt: skip
    with db.engine(db_url).begin() as conn:
        conn.execute(sa.insert(drift_reports), [{**common, **r} for r in rows])
        conn.execute(sa.insert(retrain_requests), [request])
    try:
        series = {s["day"]: s for s in mlops.drift_series(db_url, days=10_000)}
        assert series[day]["drifted"] == ["temp"]
        assert series[day]["drift_share"] == 0.04
        assert series[day]["crossed"] is True
        assert series[day]["retrain_reason"] == "ROC-AUC dropped on 1999-02-01 <probe>"
        page = client.get("/mlops/drift", headers=token("viewer")).text
        assert "<th>retraining requested</th>" in page
        assert "<td>ROC-AUC dropped on 1999-02-01 &lt;probe&gt;</td>" in page
    finally:
        with db.engine(db_url).begin() as conn:
            conn.execute(sa.delete(drift_reports).where(drift_reports.c.partition_date == day))
            conn.execute(sa.delete(retrain_requests).where(retrain_requests.c.partition_date == day))


def _probe_version(conn: sa.Connection, tag: str) -> int:
    at = dt.datetime.now(dt.UTC)
    return conn.execute(sa.insert(model_versions).returning(model_versions.c.version).values(
        status="archived", dag_id="nightshift_train", run_id=f"mlops-probe-{tag}", code_version="probe",
        artifact_uri="file:///x", dataset_uri="file:///x", dataset_sha256="0", data_window={}, feature_service="x",
        feast_registry_version="0", ingestion_run_ids=[], validation_run_ids=[], metrics={}, hyperparameters={},
        params={}, created_at=at, updated_at=at,
    )).scalar_one()  # fmt: skip


def _deployed(conn: sa.Connection, model: str, version: int, action: str, succeeded: bool, previous: int) -> None:
    conn.execute(sa.insert(deployments).values(
        model=model, version=version, action=action, succeeded=succeeded, previous_stable_version=previous,
        reason="probe", detail={}, dag_id="nightshift_deploy", run_id="mlops-probe", created_at=dt.datetime.now(dt.UTC),
    ))  # fmt: skip


def test_a_rollback_goes_back_to_what_the_last_successful_promotion_replaced(db_url) -> None:
    model = "mlops_probe_model"
    with db.engine(db_url).begin() as conn:
        first, second, third = (_probe_version(conn, tag) for tag in ("a", "b", "c"))
        _deployed(conn, model, second, "promote", True, first)
        _deployed(conn, model, second, "promote", False, third)  # failed: not what it replaced
        _deployed(conn, model, second, "rollback", True, third)  # not a promotion
        _deployed(conn, "another_model", second, "promote", True, third)
    try:
        assert rollback_target(db_url, model, second) == first
        assert rollback_target(db_url, model, third) is None
        with db.engine(db_url).begin() as conn:
            _deployed(conn, model, second, "promote", True, third)
        assert rollback_target(db_url, model, second) == third  # the latest promotion counts
    finally:
        with db.engine(db_url).begin() as conn:
            conn.execute(sa.delete(deployments).where(deployments.c.run_id == "mlops-probe"))
            conn.execute(sa.delete(model_versions).where(model_versions.c.run_id.like("mlops-probe-%")))
