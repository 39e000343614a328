"""The ML Ops plugin mounted in Airflow's real API app, behind Airflow's own auth (SimpleAuthManager)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from include.alerts import Alert, send

pytestmark = pytest.mark.integration
PAGES = ["/mlops/versions", "/mlops/deployments", "/mlops/validations", "/mlops/drift", "/mlops/alerts"]


@pytest.fixture(scope="module")
def api(settings):
    from airflow.api_fastapi.app import create_app

    from include.cli import ensure_passwords

    passwords = json.loads(ensure_passwords(settings).read_text())
    client = TestClient(create_app())

    def token(user: str) -> dict[str, str]:
        response = client.post("/auth/token", json={"username": user, "password": passwords[user]})
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    return client, token


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
    assert "nightshift" in response.text


def test_a_viewer_and_an_analyst_cannot_act(api) -> None:
    client, token = api
    for user in ("viewer", "analyst"):
        response = client.post("/mlops/actions", data={"action": "rollback"}, headers=token(user))
        assert response.status_code == 403, user


def test_an_operator_gets_a_clear_error_for_a_bad_action(api) -> None:
    client, token = api
    response = client.post("/mlops/actions", data={"action": "delete"}, headers=token("oncall"))
    assert response.status_code == 400
    assert "promote or rollback" in response.json()["detail"]


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
