"""The real Airflow for the tests that meet it as users do: its components as `bin/nightshift airflow`
starts them, on the test Postgres, and the REST calls a script makes. The browser (Debian's chromium
through Playwright) and the login are here too, for the UI and the security tiers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from include.core.assets import (
    BACKTEST_DAG,
    DEPLOY_DAG,
    INGEST_DAG,
    MONITOR_DAG,
    PREDICT_BATCH_DAG,
    SERVING_HEALTH_DAG,
    TRAIN_DAG,
)
from include.ops.cli import AIRFLOW_COMPONENTS, ensure_passwords
from include.ops.runtime import airflow_processes
from tests.factories import unused_port

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = os.environ.get("NIGHTSHIFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
RUN_TIMEOUT_S = 300


@dataclass
class Airflow:
    """The running Airflow: its URL, the UI users' passwords, and the REST calls a script makes."""

    url: str
    passwords: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # each process by name (`airflow_processes`)

    def token(self, user: str) -> str:
        response = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]},
                              timeout=30)  # fmt: skip
        assert response.status_code == 201, response.text
        return response.json()["access_token"]

    def api(self, method: str, path: str, user: str = "admin", headers: dict | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}", **(headers or {})}
        return httpx.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} still {run['state']} after {timeout_s:.0f} s")

    def runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after"}).json()["dag_runs"]


@contextlib.contextmanager
def running_airflow(settings, name: str, components: Sequence[str] = AIRFLOW_COMPONENTS,
                    env_extra: dict[str, str] | None = None) -> Iterator[Airflow]:  # fmt: skip
    """`components` of Airflow until the block ends, and the executor's workers (`env_extra` may name
    CeleryExecutor); logs in test-artifacts/<name>-logs/. Each process runs in a session of its own."""
    logs = ARTIFACTS / f"{name}-logs"
    for attempt in range(1, 4):
        # The api-server must know its port before it starts (the other components call it at
        # AIRFLOW__API__BASE_URL), so it cannot bind port 0: if another process takes the port in
        # between, it exits and the stack starts again on another one.
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, **(env_extra or {}), "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": url,
               "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False", "AIRFLOW__API__WORKERS": "1"}  # fmt: skip
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        processes = {n: p for n, p in airflow_processes(env).items() if n in components or n.startswith("worker-")}
        procs = {n: subprocess.Popen(["airflow", *argv], env=penv, stdout=(logs / f"{n}.log").open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
                 for n, (argv, penv) in processes.items()}  # fmt: skip
        stack = Airflow(url, json.loads(ensure_passwords(settings).read_text()), procs)
        try:
            _wait_until_ready(stack, procs, logs)
            break
        except AssertionError:
            taken = procs["api-server"].poll() is not None and "address already in use" in (
                logs / "api-server.log").read_text().lower()  # fmt: skip
            _stop(procs.values())
            if not taken or attempt == 3:
                raise
    try:
        yield stack
    finally:
        _stop(procs.values())


def _stop(procs) -> None:
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


# Every DAG of dags/: the stack is ready once the dag-processor has parsed them all.
EVERY_DAG = {INGEST_DAG, TRAIN_DAG, DEPLOY_DAG, MONITOR_DAG, PREDICT_BATCH_DAG, SERVING_HEALTH_DAG, BACKTEST_DAG}


def _wait_until_ready(stack: Airflow, procs: dict[str, subprocess.Popen], logs: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [c for c, p in procs.items() if p.poll() is not None]
        assert not dead, f"{dead} exited; see {logs}"
        try:
            health = httpx.get(f"{stack.url}/api/v2/monitor/health", timeout=5).json()
            parsed = stack.api("GET", "/dags", params={"dag_id_pattern": "nightshift_"}).json()
            scheduler_ok = "scheduler" not in procs or health["scheduler"]["status"] == "healthy"
            if scheduler_ok and {d["dag_id"] for d in parsed["dags"]} >= EVERY_DAG:
                return
        except (httpx.HTTPError, KeyError, AssertionError):
            pass
        time.sleep(2)
    raise AssertionError(f"Airflow not ready after {timeout_s:.0f} s; see {logs}")


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM}: `apt-get install chromium` (make install-test does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def login(browser, airflow: Airflow, user: str):
    """A new browser page, signed in to Airflow as `user` through its login form."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{airflow.url}/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(airflow.passwords[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{airflow.url}/")
    return page
