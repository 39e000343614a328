"""The integration and security tiers' fixtures: the DAG bag, one trained model for the train and deploy
tests, the local serving process, and the alert receivers. tests/conftest.py registers this module as a
plugin, so a session fixture is built once for both directories; nothing here is autouse (each
directory's conftest opts in). Every server here binds port 0 and reports the port it got, so no port
is picked first and bound later (where another process can take it).

June–July 2013 is ingested first (its own days, apart from the ingest tests' May), then the train
DAG trains on 44 days, validates on 7 and tests on the last 10, with a small budget.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from include import db
from include.core.config import load_settings

DAGS = Path(__file__).resolve().parents[1] / "dags"
START, END = dt.date(2013, 6, 1), dt.date(2013, 7, 31)
CONF = {"end_date": END.isoformat(), "train_days": 44, "test_days": 10, "tuner": "random", "max_trials": 2,
        "epochs": 4, "ensemble_size": 2, "ensemble_method": "auto",
        "warm_start": "both", "tree_member": False, "seed": 11}  # fmt: skip


@pytest.fixture(scope="session")
def alert_receivers():
    """A real SMTP server (aiosmtpd) and a real HTTP webhook receiver, wired in as the Airflow
    connections the alerts module sends through (env-var connections win over the database)."""
    import email
    import email.policy
    import http.server
    import json
    import threading

    from aiosmtpd.controller import Controller

    received: dict[str, list] = {"mails": [], "posts": []}

    class Mailbox:
        async def handle_DATA(self, server, session, envelope):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            body = message.get_body(preferencelist=("html", "plain"))
            received["mails"].append({"to": envelope.rcpt_tos, "subject": str(message["subject"]),
                                      "body": body.get_content() if body else ""})  # fmt: skip
            return "250 Message accepted"

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received["posts"].append({"path": self.path, "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    class AnyPortController(Controller):
        """aiosmtpd binds port 0 fine but then probes `self.port` (still 0): read the bound one first."""

        def _trigger_server(self) -> None:
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    smtp = AnyPortController(Mailbox(), hostname="127.0.0.1", port=0)
    smtp.start()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port,
        "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 5, "retry_limit": 1},
    })  # fmt: skip
    os.environ["AIRFLOW_CONN_NIGHTSHIFT_ALERT_WEBHOOK"] = json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": web.server_address[1], "schema": "http",
        "extra": {"path": "/hooks/nightshift"},
    })  # fmt: skip
    yield received
    smtp.stop()
    web.shutdown()


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def trained(dagbag, db_url):
    ingest = dagbag.get_dag("nightshift_ingest").test(
        run_conf={"start_date": START.isoformat(), "end_date": END.isoformat()}
    )
    assert ingest.state == "success"
    run = dagbag.get_dag("nightshift_train").test(run_conf=CONF)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "success", states
    from include.db import model_versions

    with db.engine(db_url).connect() as conn:
        row = conn.execute(sa.select(model_versions).where(model_versions.c.run_id == run.run_id)).mappings().one()
    return run, dict(row), states


@pytest.fixture(scope="session")
def serving(tmp_path_factory):
    """The local server over a fresh serving dir, on the port it bound, configured through the environment."""
    from include.serving.process import local_server

    saved = {k: os.environ.get(k) for k in ("NIGHTSHIFT_SERVING_DIR", "NIGHTSHIFT_SERVING_URL")}
    os.environ["NIGHTSHIFT_SERVING_DIR"] = str(tmp_path_factory.mktemp("serving"))
    os.environ["NIGHTSHIFT_SERVING_URL"] = "http://127.0.0.1:0"  # any free port
    try:
        with local_server(load_settings()) as url:
            os.environ["NIGHTSHIFT_SERVING_URL"] = url  # what the DAGs' tasks read
            yield load_settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL where nothing answers: its port stays bound (so no server can take it) but never listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def clients_closed(monkeypatch) -> Iterator[None]:
    """Fails the test if a ServingClient opened during it (by the test or the steps it runs) is left open."""
    from include.serving.client import ServingClient

    opened: list[ServingClient] = []
    init = ServingClient.__init__

    def tracked(self: ServingClient, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(ServingClient, "__init__", tracked)
    yield
    left_open = [f"{c.base_url} ({c.model})" for c in opened if not c.closed]
    assert not left_open, f"ServingClient left open: {left_open}; use it in a `with` block"


@pytest.fixture(scope="module")
def stable_model(dagbag, serving, trained) -> int:
    """The version serving as `stable` when the module starts (the trained model, deployed here unless
    the deploy tests left one). Per module: deploy tests move `stable`, and a later module must see
    what serves now, not what served when the first module asked."""
    from include.serving.state import read_state

    state = read_state(serving)
    if state.stable is None:
        run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": trained[1]["version"], "action": "promote"})
        assert run.state == "success"
        state = read_state(serving)
    return state.stable


@pytest.fixture(scope="module")
def predict_service(stable_model, serving):
    """The prediction service on the test session's Postgres, online store and serving, on a port of its own;
    state is trusted for 0.2 s and the log flushed every 0.5 s, so tests see changes at once."""
    from include.core.config import PredictService
    from include.predict.app import running

    config = PredictService(state_ttl_s=0.2, log_flush_s=0.5, log_batch_rows=200)
    started = dt.datetime.now(dt.UTC)
    try:
        with running(load_settings(), config) as (url, app):
            yield SimpleNamespace(url=url, app=app, version=stable_model)
    finally:
        # What the module's callers were served is its own: no later module's monitor may judge a day by it.
        with db.engine(load_settings().require_database_url()).begin() as conn:
            conn.execute(sa.delete(db.served_batches).where(db.served_batches.c.written_at >= started))


def wait_for_server(served: Callable[[], bool], what: str) -> None:
    """Wait (up to the deploy's load timeout) until the server shows it applied a models.config change."""
    from include.core.config import DeployPolicy

    deadline = time.monotonic() + DeployPolicy().load_timeout_s
    while not served():
        assert time.monotonic() < deadline, f"the server did not apply models.config: {what}"
        time.sleep(0.3)


def served_label(url: str, model: str, label: str) -> int | None:
    """The version the server at `url` routes `label` to; None when it has no such label."""
    from include.serving.client import ServingClient, ServingError

    with ServingClient(url, model, retries=0) as client:
        try:
            return int(client.status(label=label)[0]["version"])
        except ServingError as err:
            if err.status is None:
                raise
            return None


@pytest.fixture(scope="module")
def serving_restored(stable_model, serving, db_url) -> Iterator[None]:
    """Leave serving and the registry as the module found them: later modules score with `stable_model`."""
    config = serving.models_config.read_bytes()
    mv = db.model_versions
    with db.engine(db_url).connect() as conn:
        statuses = dict(conn.execute(sa.select(mv.c.version, mv.c.status)).all())
    yield
    staged = serving.models_config.with_suffix(".restore")
    staged.write_bytes(config)
    os.replace(staged, serving.models_config)
    with db.engine(db_url).begin() as conn:
        for version, status in statuses.items():
            conn.execute(sa.update(mv).where(mv.c.version == version).values(status=status))
        conn.execute(sa.update(mv).where(mv.c.version.not_in(list(statuses)), mv.c.status.in_(
            ["production", "canary"])).values(status="archived"))  # fmt: skip
    wait_for_server(lambda: served_label(serving.serving_url, serving.model_name, "stable") == stable_model,
                    "stable restored")  # fmt: skip


def only_stable(settings, db_url: str) -> int:
    """Serving with a `stable` and no canary label (another test may have left one), the registry agreeing;
    returns the stable version."""
    import datetime as dt

    from include.serving.state import ServingState, read_state, write_state
    from include.train import registry

    state = read_state(settings)
    assert state.stable is not None
    if state.canary is not None:
        write_state(settings, ServingState(state.versions, {"stable": state.stable}))
        wait_for_server(lambda: served_label(settings.serving_url, settings.model_name, "canary") is None,
                        "canary label removed")  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    with db.engine(db_url).connect() as conn:
        live = conn.execute(sa.select(db.model_versions.c.version).where(
            db.model_versions.c.status.in_(("production", "canary")))).scalars().all()  # fmt: skip
    for version in live:
        if version != state.stable:
            registry.set_status(db_url, version, "archived", now, "reset by a deploy test")
    if registry.get_version(db_url, state.stable)["status"] != "production":  # a failed test's leftover
        registry.set_status(db_url, state.stable, "production", now, "reset by a deploy test")
    return state.stable
