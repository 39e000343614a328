"""The Airflow UI and REST API as their users meet them, on the full Airflow.

The module starts Airflow's api-server, scheduler, dag-processor and triggerer (LocalExecutor) on
the test Postgres, next to the local TF-Serving-compatible server, and drives it:

* as a script would, over HTTP: a token from `/auth/token`, a run triggered with `conf`, bad
  `conf` refused with HTTP 400 and a message;
* in a real browser (Debian's chromium through Playwright): the analyst triggers ingestion through
  the form, on-call reads drift and alerts in the ML Ops view and rolls back, a viewer can do neither.

The scheduler runs with `use_job_schedule=False`, so only the runs these tests trigger happen.
Screenshots and the components' logs are saved under `test-artifacts/`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from urllib.parse import unquote

import httpx
import pytest
import sqlalchemy as sa

from include import db
from tests.airflow_stack import ARTIFACTS, Airflow, chromium, login, running_airflow
from tests.factories import recorded_run as get_run
from tests.factories import register_copy

pytestmark = [pytest.mark.integration, pytest.mark.ui]
SHOTS = ARTIFACTS / "screenshots"
REST_DAY = "2013-09-02"
FORM_DAYS = ("2013-09-03", "2013-09-04")


@pytest.fixture(scope="module")
def rollback_ready(dagbag, serving, stable_model, trained, db_url) -> dict[str, int]:
    """A fresh version promoted over the current stable one, so on-call has something to roll back."""
    from include.serving.state import read_state

    _, row, _ = trained
    before = read_state(serving).stable
    version = register_copy(db_url, row, row["artifact_uri"], "ui")
    run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": version, "action": "promote"})
    assert run.state == "success"
    assert read_state(serving).stable == version
    return {"previous": before, "current": version}


@pytest.fixture(scope="module")
def monitored(dagbag, serving, stable_model, trained, db_url) -> None:
    """At least one monitored day (an Evidently report) and one warning alert for on-call to read."""
    with db.engine(db_url).connect() as conn:
        days = conn.execute(sa.text("SELECT count(*) FROM nightshift.drift_reports")).scalar_one()
        # The test filters warnings: drift no longer warns unless it matters to the model, so the earlier
        # tests may have left only critical alerts.
        alerts = conn.execute(sa.text("SELECT count(*) FROM nightshift.alerts WHERE severity = 'warning'")).scalar_one()
    if not days:
        last = trained[1]["data_window"]["end"]
        run = dagbag.get_dag("nightshift_monitor").test(run_conf={"start_date": last, "end_date": last})
        assert run.state == "success"
    if not alerts:
        from include.core.alerts import Alert, send

        send(db_url, Alert(kind="drift", key="ui-test", severity="warning", title="Data drift (UI test)",
                           impact="the model sees inputs unlike its training data"))  # fmt: skip


@pytest.fixture(scope="module")
def airflow(rollback_ready, monitored, settings) -> Iterator[Airflow]:
    """api-server, scheduler, dag-processor and triggerer, as `bin/nightshift airflow` starts them."""
    with running_airflow(settings, "airflow") as stack:
        # The deployment as on-call runs it: deploy is live; train and monitor stay paused here
        # (their Asset triggers would start runs these tests do not ask for).
        for dag_id, paused in (("nightshift_deploy", False), ("nightshift_train", True), ("nightshift_monitor", True)):
            assert stack.api("PATCH", f"/dags/{dag_id}", json={"is_paused": paused}).status_code == 200
        yield stack


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        yield browser


def _login(browser, airflow: Airflow, user: str):
    return login(browser, airflow, user)


def _run_id(url: str) -> str:
    return unquote(url.split("/runs/")[1].split("?")[0].split("/")[0])


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# ---------------------------------------------------------------- REST, as a script


def test_a_script_triggers_a_run_with_conf_and_it_is_recorded(airflow: Airflow, db_url: str) -> None:
    token = httpx.post(f"{airflow.url}/auth/token",
                       json={"username": "analyst", "password": airflow.passwords["analyst"]})  # fmt: skip
    assert token.status_code == 201
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert airflow.api("PATCH", "/dags/nightshift_ingest", json={"is_paused": False}).status_code == 200
    conf = {"start_date": REST_DAY, "end_date": REST_DAY}
    response = httpx.post(f"{airflow.url}/api/v2/dags/nightshift_ingest/dagRuns", headers=headers,
                          json={"logical_date": None, "conf": conf, "note": "from a script"})  # fmt: skip
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["conf"] == conf
    done = airflow.wait_for_run("nightshift_ingest", run["dag_run_id"])
    assert done["state"] == "success"
    recorded = get_run(db_url, "nightshift_ingest", run["dag_run_id"])
    assert recorded["conf"] == conf
    assert recorded["params"] == conf
    assert recorded["triggered_by"] == "analyst"
    with db.engine(db_url).connect() as conn:
        days = conn.execute(sa.text("SELECT partition_date FROM nightshift.ingestion_runs WHERE run_id = :r"),
                            {"r": run["dag_run_id"]}).scalars().all()  # fmt: skip
    assert days == [dt.date.fromisoformat(REST_DAY)]


@pytest.mark.parametrize(
    ("dag_id", "conf", "message"),
    [
        ("nightshift_ingest", {"start_date": "2013-13-45"}, "'2013-13-45' is not a 'date'"),
        ("nightshift_train", {"train_days": 3}, "3 is less than the minimum of 7"),
        (
            "nightshift_train",
            {"tuner": "annealing"},
            "'annealing' is not one of ['hyperband', 'bayesian', 'random', 'grid', 'evolution']",
        ),
        ("nightshift_deploy", {"action": "delete"}, "'delete' is not one of ['canary', 'promote', 'rollback']"),
        ("nightshift_deploy", {"version": 0}, "0 is less than the minimum of 1"),
    ],
)
def test_a_bad_conf_gets_http_400_saying_what_is_wrong(airflow: Airflow, dag_id: str, conf: dict, message: str) -> None:
    before = len(airflow.runs(dag_id))
    user = "oncall" if dag_id == "nightshift_deploy" else "analyst"  # who may trigger it (include/core/access.py)
    response = airflow.api("POST", f"/dags/{dag_id}/dagRuns", user=user, json={"logical_date": None, "conf": conf})
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert len(airflow.runs(dag_id)) == before


def test_airflow_refuses_a_run_id_that_climbs_out_of_its_folder(airflow: Airflow) -> None:
    """Airflow itself refuses `..` in a run id; every other id gets a folder of its own (lake.safe_name)."""
    before = len(airflow.runs("nightshift_ingest"))
    response = airflow.api("POST", "/dags/nightshift_ingest/dagRuns", user="analyst",
                           json={"dag_run_id": "manual__../../models", "logical_date": None, "conf": {}})  # fmt: skip
    assert response.status_code == 400
    assert "'..'" in response.text
    assert len(airflow.runs("nightshift_ingest")) == before


def test_a_viewer_token_cannot_trigger(airflow: Airflow) -> None:
    response = airflow.api("POST", "/dags/nightshift_ingest/dagRuns", user="viewer",
                           json={"logical_date": None, "conf": {}})  # fmt: skip
    assert response.status_code == 403


# ---------------------------------------------------------------- the browser


def test_analyst_triggers_ingestion_from_the_form_and_sees_it_succeed(airflow: Airflow, browser, db_url) -> None:
    page = _login(browser, airflow, "analyst")
    page.goto(f"{airflow.url}/dags/nightshift_ingest")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Date range", exact=True).click()
    page.locator("input[name=element_start_date]").fill(FORM_DAYS[0])
    page.locator("input[name=element_end_date]").fill(FORM_DAYS[1])
    _shot(page, "analyst-1-ingest-form")
    before = {r["dag_run_id"] for r in airflow.runs("nightshift_ingest")}
    page.get_by_test_id("trigger-dag-submit").click()
    page.get_by_text("Dag run has been successfully triggered").first.wait_for()
    page.wait_for_url(re.compile(r".*/dags/nightshift_ingest/runs/manual__.*"))
    run_id = _run_id(page.url)
    assert run_id not in before
    assert airflow.wait_for_run("nightshift_ingest", run_id)["state"] == "success"
    page.goto(f"{airflow.url}/dags/nightshift_ingest/runs")
    row = page.get_by_role("row").filter(has_text=run_id)
    row.get_by_text("success").wait_for()
    _shot(page, "analyst-2-run-succeeded")
    recorded = get_run(db_url, "nightshift_ingest", run_id)
    assert recorded["params"] == {"start_date": FORM_DAYS[0], "end_date": FORM_DAYS[1]}
    assert recorded["triggered_by"] == "analyst"
    page.goto(f"{airflow.url}/dags/nightshift_ingest/plugin/mlops-dag")
    tab = page.frame_locator("iframe")
    tab.get_by_role("row").filter(has_text=run_id).get_by_text("2 day(s) ingested").wait_for()
    _shot(page, "analyst-3-dag-tab-lineage")
    tab.get_by_role("row").filter(has_text=run_id).get_by_role("link", name="validation(s)").click()
    tab.get_by_role("heading", name=re.compile("Validations of run")).wait_for()
    with page.expect_response(lambda r: "/mlops/files/reports/data_docs/" in r.url) as docs:
        tab.get_by_role("link", name="Data Docs").first.click()
    assert docs.value.status == 200
    tab.get_by_text("Expectation", exact=False).first.wait_for()  # GX's own page, inside the tab
    _shot(page, "analyst-4-data-docs")


def test_oncall_reads_drift_and_an_alert_then_rolls_back(airflow: Airflow, browser, rollback_ready, serving) -> None:
    from include.serving.state import read_state

    page = _login(browser, airflow, "oncall")
    page.get_by_role("link", name="ML Ops").first.click()
    view = page.frame_locator("iframe")
    view.get_by_role("heading", name="Deployments").wait_for()
    view.get_by_role("link", name="Drift", exact=True).click()
    view.get_by_role("img", name="drift share and ROC-AUC by day").or_(view.get_by_text("needs two")).first.wait_for()
    _shot(page, "oncall-1-drift")
    with page.expect_response(lambda r: "/mlops/files/reports/drift/" in r.url) as report:
        view.get_by_role("link", name="Evidently report").first.click()
    assert report.value.status == 200
    assert "Dataset Drift" in report.value.text()
    view.get_by_role("heading", name=re.compile("Evidently report for 2013-")).wait_for()
    view.frame_locator("iframe").get_by_text("Dataset Drift").first.wait_for()  # drawn by Evidently's JavaScript
    _shot(page, "oncall-2-evidently-report")

    page.goto(f"{airflow.url}/plugin/mlops")
    view.get_by_role("link", name="Alerts", exact=True).click()
    severity = view.locator("select[name=severity]")
    severity.select_option("warning")
    view.get_by_role("button", name="Filter").click()
    # The frame navigates: read the rows of the filtered page (the one that marks `warning` as
    # chosen), not those of the page it is leaving.
    view.locator("select[name=severity] option[value=warning][selected]").wait_for(state="attached")
    rows = view.locator("tbody tr")
    rows.first.wait_for()
    assert all("warning" in t for t in rows.all_inner_texts())
    _shot(page, "oncall-3-alerts")
    rows.first.get_by_role("link").first.click()
    view.get_by_role("heading", name="Message").wait_for()
    _shot(page, "oncall-4-alert")

    page.goto(f"{airflow.url}/plugin/mlops")
    view.get_by_role("link", name=f"v{rollback_ready['current']}", exact=True).first.click()
    view.get_by_role("heading", name="Gate checks").wait_for()
    view.get_by_role("heading", name="Lineage").wait_for()
    assert view.get_by_role("link", name="manifest").count() == 1
    _shot(page, "oncall-0-model-version")
    view.get_by_role("link", name="Deployments", exact=True).click()
    view.get_by_role("button", name="Roll back stable…").click()
    view.get_by_text(re.compile(rf"back to v{rollback_ready['previous']}, the version it replaced")).wait_for()
    _shot(page, "oncall-5-confirm-rollback")
    view.get_by_role("button", name="Confirm rollback").click()
    banner = view.locator("div.actions").filter(has_text="Rollback requested as oncall")
    banner.wait_for()
    run_id = banner.get_by_role("link").inner_text()
    run = airflow.wait_for_run("nightshift_deploy", run_id)
    assert run["state"] == "success"
    assert run["conf"]["action"] == "rollback"
    assert run["triggering_user_name"] == "oncall"
    assert run["note"] == "rollback from the ML Ops view"
    assert read_state(serving).stable == rollback_ready["previous"]
    banner.get_by_text("success").wait_for()  # the page follows the run until it ends
    history = view.locator("tbody tr").first
    assert "rollback" in history.inner_text()
    assert "ok" in history.inner_text()
    _shot(page, "oncall-6-rolled-back")
    banner.get_by_role("link").click()  # opens in Airflow's own UI, not inside the frame
    page.wait_for_url(re.compile(r".*/dags/nightshift_deploy/runs/manual__.*"))
    assert _run_id(page.url) == run_id
    _shot(page, "oncall-7-deploy-run")


def test_a_viewer_can_read_but_not_trigger_or_act(airflow: Airflow, browser) -> None:
    page = _login(browser, airflow, "viewer")
    page.goto(f"{airflow.url}/dags/nightshift_train")
    before = len(airflow.runs("nightshift_train"))
    trigger = page.get_by_role("button", name="Trigger").first
    trigger.wait_for()
    if trigger.is_enabled():  # the UI may offer the button; Airflow refuses the POST behind it
        trigger.click()
        page.get_by_test_id("trigger-dag-submit").click()
        page.get_by_text("403").or_(page.get_by_text("Forbidden")).or_(page.get_by_text("not allowed")).first.wait_for()
    _shot(page, "viewer-1-trigger-refused")
    assert len(airflow.runs("nightshift_train")) == before

    page.goto(f"{airflow.url}/plugin/mlops")
    view = page.frame_locator("iframe")
    view.get_by_text("Read-only: promote and roll back need permission").wait_for()
    assert view.get_by_role("button", name="Roll back stable").count() == 0
    _shot(page, "viewer-2-mlops-read-only")
    forced = page.request.post(f"{airflow.url}/mlops/actions", form={"action": "rollback"})
    assert forced.status == 403
    assert "permission to trigger nightshift_deploy" in forced.json()["detail"]


def test_a_misspelt_field_fails_the_run_at_once_naming_the_fields(airflow: Airflow) -> None:
    assert airflow.api("PATCH", "/dags/nightshift_ingest", json={"is_paused": False}).status_code == 200
    response = airflow.api("POST", "/dags/nightshift_ingest/dagRuns", user="analyst",
                           json={"logical_date": None, "conf": {"start_dte": REST_DAY}})  # fmt: skip
    assert response.status_code == 200  # Params allow extra keys; the run's first task refuses them
    run_id = response.json()["dag_run_id"]
    assert airflow.wait_for_run("nightshift_ingest", run_id)["state"] == "failed"
    path = f"/dags/nightshift_ingest/dagRuns/{run_id}/taskInstances/collect"
    task = airflow.api("GET", path).json()
    assert task["state"] == "failed"
    assert task["try_number"] == 1  # no retry: retrying cannot fix a typo
    log = airflow.api("GET", f"{path}/logs/1").text  # JSON: the task's structured log lines
    assert "nightshift_ingest has no form field 'start_dte'; its fields are end_date, start_date" in log
