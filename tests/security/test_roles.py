"""Who may do what, asked of the real Airflow (api-server and dag-processor on the test Postgres, FAB
auth manager): every role against every DAG, over REST and in the trigger form (issue 14, item 1).

The expectations are written out here, apart from include/core/access.py, so a change to that
table that grants more than the README promises fails these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.airflow_stack import Airflow, chromium, login, running_airflow

DAGS = ("nightshift_ingest", "nightshift_train", "nightshift_monitor", "nightshift_deploy", "nightshift_backtest")
USERS = ("viewer", "analyst", "oncall", "admin")
MAY_TRIGGER = {
    "viewer": set(),
    "analyst": {"nightshift_ingest", "nightshift_train", "nightshift_backtest"},
    "oncall": set(DAGS),
    "admin": set(DAGS),
}
MAY_CLEAR = {"viewer": set(), "analyst": set(), "oncall": set(DAGS), "admin": set(DAGS)}


@pytest.fixture(scope="module")
def airflow(settings) -> Iterator[Airflow]:
    with running_airflow(settings, "roles", components=("api-server", "dag-processor")) as stack:
        yield stack


def _runs(airflow: Airflow, dag_id: str) -> set[str]:
    response = airflow.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {r["dag_run_id"] for r in response.json()["dag_runs"]}


@pytest.mark.parametrize("dag_id", DAGS)
@pytest.mark.parametrize("user", USERS)
def test_only_the_roles_allowed_may_trigger_a_dag_over_rest(airflow: Airflow, user: str, dag_id: str) -> None:
    before = _runs(airflow, dag_id)
    run_id = f"manual__roles_{user}_{uuid.uuid4().hex[:6]}"
    conf = {"action": "rollback"} if dag_id == "nightshift_deploy" else {}
    response = airflow.api("POST", f"/dags/{dag_id}/dagRuns", user=user,
                           json={"dag_run_id": run_id, "logical_date": None, "conf": conf})  # fmt: skip
    after = _runs(airflow, dag_id)
    if dag_id in MAY_TRIGGER[user]:
        assert response.status_code == 200, response.text
        assert after - before == {run_id}
        # No scheduler runs here; the run is removed so nothing ever executes it.
        assert airflow.api("DELETE", f"/dags/{dag_id}/dagRuns/{run_id}").status_code == 204
    else:
        assert response.status_code == 403, response.text
        assert after == before


@pytest.mark.parametrize("dag_id", DAGS)
@pytest.mark.parametrize("user", USERS)
def test_only_the_roles_allowed_may_clear_task_instances(airflow: Airflow, user: str, dag_id: str) -> None:
    response = airflow.api("POST", f"/dags/{dag_id}/clearTaskInstances", user=user, json={"dry_run": True})
    assert response.status_code == (200 if dag_id in MAY_CLEAR[user] else 403), response.text


@pytest.mark.parametrize("user", USERS)
def test_every_role_reads_every_dag(airflow: Airflow, user: str) -> None:
    for dag_id in DAGS:
        assert airflow.api("GET", f"/dags/{dag_id}", user=user).status_code == 200


def test_without_a_token_or_with_a_forged_one_nothing_is_allowed(airflow: Airflow) -> None:
    url = f"{airflow.url}/api/v2/dags/nightshift_deploy/dagRuns"
    body = {"logical_date": None, "conf": {"action": "rollback"}}
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    forged = airflow.token("viewer")[:-4] + "AAAA"
    refused = httpx.post(url, json=body, headers={"Authorization": f"Bearer {forged}"}, timeout=30)
    assert refused.status_code in (401, 403), refused.text
    wrong = httpx.post(f"{airflow.url}/auth/token", json={"username": "admin", "password": "admin"}, timeout=30)
    assert wrong.status_code in (400, 401, 403)
    assert "access_token" not in wrong.text


@pytest.mark.parametrize("user", ["viewer", "analyst"])
def test_the_ml_ops_view_refuses_a_rollback_to_whoever_airflow_would_refuse(airflow: Airflow, user: str) -> None:
    before = _runs(airflow, "nightshift_deploy")
    response = httpx.post(f"{airflow.url}/mlops/actions", data={"action": "rollback", "reason": "attack"},
                          headers={"Authorization": f"Bearer {airflow.token(user)}", "Origin": airflow.url},
                          timeout=30)  # fmt: skip
    assert response.status_code == 403
    assert _runs(airflow, "nightshift_deploy") == before


@pytest.fixture(scope="module")
def pages(airflow: Airflow) -> Iterator[dict]:
    """One signed-in browser page per user, for the trigger-form tests."""
    with chromium() as browser:
        signed_in: dict = {}

        def page_of(user: str):
            if user not in signed_in:
                signed_in[user] = login(browser, airflow, user)
            return signed_in[user]

        yield page_of


@pytest.mark.ui
@pytest.mark.parametrize("dag_id", DAGS)
@pytest.mark.parametrize("user", USERS)
def test_the_trigger_form_lets_only_the_roles_allowed_trigger(airflow: Airflow, pages, user: str, dag_id: str) -> None:
    before = _runs(airflow, dag_id)
    page = pages(user)
    page.goto(f"{airflow.url}/dags/{dag_id}")
    trigger = page.get_by_role("button", name="Trigger").first
    trigger.wait_for()
    if dag_id in MAY_TRIGGER[user]:
        trigger.click()
        page.get_by_role("dialog").get_by_role("button", name="Trigger").click()
        page.wait_for_url(f"{airflow.url}/dags/{dag_id}/runs/**")
        created = _runs(airflow, dag_id) - before
        assert len(created) == 1
        assert airflow.api("DELETE", f"/dags/{dag_id}/dagRuns/{created.pop()}").status_code == 204
        return
    if trigger.is_enabled():  # the UI may offer the button; Airflow refuses the POST behind it
        trigger.click()
        page.get_by_role("dialog").get_by_role("button", name="Trigger").click()
        refusal = page.get_by_text("403").or_(page.get_by_text("Forbidden")).or_(page.get_by_text("not allowed"))
        refusal.first.wait_for()
        page.keyboard.press("Escape")
    assert _runs(airflow, dag_id) == before


def _listening_on(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port}


def test_airflow_and_serving_listen_on_loopback_only(airflow: Airflow, serving) -> None:
    from urllib.parse import urlsplit

    for url in (airflow.url, serving.serving_url):
        port = urlsplit(url).port
        assert _listening_on(port) == {"127.0.0.1"}, f"{url} listens on {_listening_on(port)}"
