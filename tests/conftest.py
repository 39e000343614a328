"""Test session: a real Postgres (embedded, or TEST_DATABASE_URL's server), migrated by the same
code the demo uses, a throwaway lake and Airflow home, and `feast apply` on them.

The environment is set before anything imports Airflow, which reads its configuration at import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE = "nightshift_test"
_state: dict[str, object] = {}


def _fresh_database(server_url: str) -> str:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from include.postgres import sqlalchemy_url

    admin = sa.create_engine(sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {TEST_DATABASE}"))
    admin.dispose()
    return make_url(server_url).set(database=TEST_DATABASE).render_as_string(hide_password=False)


def pytest_configure(config: pytest.Config) -> None:
    from include.config import load_settings
    from include.postgres import start_embedded
    from include.runtime import runtime_env

    work = Path(tempfile.mkdtemp(prefix="nightshift-test-"))
    _state["work"] = work
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        pg_dir = ROOT / ".local" / "test-pg"
        server = start_embedded(pg_dir)
        _state["embedded"] = pg_dir
    url = _fresh_database(server)
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "NIGHTSHIFT_HOME": str(ROOT),
            "NIGHTSHIFT_LOCAL_DIR": str(work),
            "NIGHTSHIFT_SOURCE": "replay",
            # dag.test() in Airflow 3.3.2 cannot prune a successful run's deadlines (see include/config.py).
            "NIGHTSHIFT_DEADLINES": "off",
        }
    )
    settings = load_settings({**os.environ, "NIGHTSHIFT_DATABASE_URL": url})
    os.environ.update(runtime_env(settings, url))

    from include.cli import prepare

    prepare(load_settings())


def pytest_unconfigure(config: pytest.Config) -> None:
    import sys

    from include.postgres import stop_embedded

    if "airflow.settings" in sys.modules:  # close Airflow's pool before its server goes away
        sys.modules["airflow.settings"].dispose_orm()
    if "embedded" in _state:
        stop_embedded(_state["embedded"])  # type: ignore[arg-type]
    if "work" in _state:
        shutil.rmtree(_state["work"], ignore_errors=True)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings():
    from include.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def db_url(settings) -> str:
    return settings.require_database_url()


@pytest.fixture(scope="session")
def lake_dir(settings):
    from include.lake import lake_root

    return lake_root(settings)


@pytest.fixture(scope="session", autouse=True)
def alert_receivers():
    """A real SMTP server (aiosmtpd) and a real HTTP webhook receiver, wired in as the Airflow
    connections the alerts module sends through (env-var connections win over the database)."""
    import email
    import email.policy
    import http.server
    import json
    import threading

    from aiosmtpd.controller import Controller

    from include.serving.process import free_port

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

    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Hook)
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
