"""The alert outbox against real receivers (the `alert_receivers` SMTP server and webhook): an alert is
delivered once per channel whatever fails around it — Postgres down, the worker killed between
recording and sending, two deliverers at once, the webhook down for one attempt."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from include import db
from include.core.alerts import Alert, deliver_pending, send

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _alert(probe: str, **extra) -> Alert:
    """An alert whose title no other test uses (the receivers are shared by the session)."""
    title = f"outbox {probe} {uuid.uuid4().hex[:8]}"
    return Alert(kind=f"outbox_{probe}", key=title, severity="warning", title=title, impact="a probe", **extra)


def _received(receivers, alert: Alert) -> tuple[int, int]:
    mails = [m for m in receivers["mails"] if m["subject"].endswith(alert.title)]
    posts = [p for p in receivers["posts"] if p["json"]["text"].endswith(alert.title)]
    return len(mails), len(posts)


def _rows(url: str, alert: Alert) -> list[dict]:
    with db.engine(url).connect() as conn:
        query = sa.select(db.alerts).where(db.alerts.c.kind == alert.kind, db.alerts.c.dedup_key == alert.key)
        return [dict(r) for r in conn.execute(query).mappings()]


def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture
def spool(monkeypatch, tmp_path) -> Path:
    """This test's own spool file."""
    path = tmp_path / "alerts" / "spool.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_ALERTS_SPOOL", str(path))
    return path


# -- Postgres down ------------------------------------------------------------------------------------

START = (
    "import pathlib, sys; from include.ops.postgres import start_embedded; "
    "print(start_embedded(pathlib.Path(sys.argv[1])))"
)


class ThrowawayPostgres:
    """An embedded Postgres of this test's own, started in a subprocess (pgserver caches its server per
    process, so a restart needs a fresh one) and stopped by the postmaster's pid, as a crash would."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="nso-", dir="/tmp"))  # short: the socket lives in it
        self.folder.chmod(0o755)  # pgserver runs the server as its own user under root
        self.data = self.folder / "pg"
        self.url = ""

    def start(self) -> str:
        done = subprocess.run([sys.executable, "-c", START, str(self.data)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=True)  # fmt: skip
        self.url = done.stdout.strip().splitlines()[-1]
        return self.url

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)  # fast shutdown
        _until(lambda: not pid_file.exists(), 30)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def throwaway_postgres():
    from include.db.migrations import upgrade

    server = ThrowawayPostgres()
    try:
        upgrade(server.start())
        yield server
    finally:
        if server.url:
            db.engine(server.url).dispose()
        server.remove()


def test_with_postgres_down_the_alert_goes_out_and_is_replayed_once_it_is_back(throwaway_postgres, spool,
                                                                               alert_receivers) -> None:  # fmt: skip
    url = throwaway_postgres.url
    warmup = _alert("warmup")
    assert send(url, warmup) is not None  # the engine's pool holds a connection that is about to die
    throwaway_postgres.stop()
    alert = _alert("pgdown", dag_id="nightshift_ingest", task_id="materialize", run_id="pgdown-run")
    began = time.monotonic()
    assert send(url, alert) is None  # no id: Postgres is down
    elapsed = time.monotonic() - began
    assert _received(alert_receivers, alert) == (1, 1)  # mail and webhook still went out
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [(e["kind"], e["key"]) for e in lines] == [(alert.kind, alert.key)]
    assert lines[0]["deliveries"]["email"].startswith("sent to")
    assert lines[0]["deliveries"]["webhook"].startswith("posted to")
    assert spool.stat().st_mode & 0o777 == 0o600
    assert send(url, alert) is None  # a retry during the outage: the spool knows it was delivered
    assert _received(alert_receivers, alert) == (1, 1)

    throwaway_postgres.start()
    assert deliver_pending(url) == 0  # nothing left to send, only to replay
    assert not spool.exists()
    rows = _rows(url, alert)
    assert len(rows) == 1
    assert rows[0]["uid"] == lines[0]["uid"]
    assert rows[0]["delivered_at"] is not None
    assert rows[0]["deliveries"] == lines[0]["deliveries"]
    assert (rows[0]["dag_id"], rows[0]["task_id"], rows[0]["run_id"]) == ("nightshift_ingest", "materialize",
                                                                          "pgdown-run")  # fmt: skip
    assert send(url, alert) is None  # back in Postgres, the same alert is still deduplicated
    assert _received(alert_receivers, alert) == (1, 1)
    print(f"send with Postgres down took {elapsed:.2f} s")


# -- a worker killed between recording and sending ------------------------------------------------------

KILLED_SENDER = """
import datetime as dt, json, os, sys
from include.core import alerts
alerts._email = lambda alert: os._exit(9)  # killed as the first channel is about to send
fields = json.loads(sys.argv[2])
alerts.send(sys.argv[1], alerts.Alert(**fields))
"""


def test_an_alert_whose_worker_was_killed_before_sending_is_delivered_once_by_the_retry(
    db_url, alert_receivers
) -> None:
    alert = _alert("killed", dag_id="nightshift_monitor", task_id="judge", run_id="killed-run")
    fields = {
        "kind": alert.kind,
        "key": alert.key,
        "severity": alert.severity,
        "title": alert.title,
        "impact": alert.impact,
        "dag_id": alert.dag_id,
        "task_id": alert.task_id,
        "run_id": alert.run_id,
    }
    lease_s = 3
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_SENDER), db_url, json.dumps(fields)],
                           cwd=ROOT, env={**os.environ, "NIGHTSHIFT_ALERTS_LEASE_S": str(lease_s)},
                           capture_output=True, text=True, timeout=180)  # fmt: skip
    assert child.returncode == 9, child.stderr[-2000:]
    assert [r["deliveries"] for r in _rows(db_url, alert)] == [{}]  # recorded, nothing sent
    assert _received(alert_receivers, alert) == (0, 0)
    # The dead worker's claim holds until its lease lapses; then the task's retry delivers it.
    time.sleep(lease_s + 0.5)
    assert send(db_url, alert) is not None  # a retry of a still-pending alert delivers it, never skips it
    assert _received(alert_receivers, alert) == (1, 1)
    assert send(db_url, alert) is None  # and now it is out: deduplicated
    deliver_pending(db_url)
    rows = _rows(db_url, alert)
    assert len(rows) == 1
    assert rows[0]["delivered_at"] is not None
    assert _received(alert_receivers, alert) == (1, 1)


# -- two deliverers at once ---------------------------------------------------------------------------------


@pytest.fixture
def slow_webhook(monkeypatch):
    """A webhook receiver that is down (503) until `state["up"]`, and takes 0.3 s to answer a post."""
    state: dict = {"up": False, "posts": []}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if state["up"]:
                time.sleep(0.3)
                state["posts"].append(body)
            self.send_response(200 if state["up"] else 503)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_ALERT_WEBHOOK", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": web.server_address[1], "schema": "http"}))  # fmt: skip
    yield state
    web.shutdown()


def test_two_deliverers_at_once_send_each_pending_alert_once(db_url, slow_webhook, alert_receivers) -> None:
    pending = [_alert(f"concurrent{i}") for i in range(3)]
    for alert in pending:
        assert send(db_url, alert) is not None
    assert [r["deliveries"]["webhook"] for a in pending for r in _rows(db_url, a)] == [
        "failed: HTTPStatusError: 503"] * len(pending)  # fmt: skip
    slow_webhook["up"] = True
    barrier, counts = threading.Barrier(2), []

    def deliverer() -> None:
        barrier.wait()
        counts.append(deliver_pending(db_url))

    threads = [threading.Thread(target=deliverer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    titles = [p["text"].split("] ", 1)[1] for p in slow_webhook["posts"]]
    for alert in pending:
        assert titles.count(alert.title) == 1, titles
        assert _received(alert_receivers, alert)[0] == 1  # the mail went out on the first attempt, once
        assert [r["delivered_at"] is not None for r in _rows(db_url, alert)] == [True]
    assert sum(counts) >= len(pending)  # between them, the two delivered all (others' leftovers too)


# -- the webhook down for one attempt -------------------------------------------------------------------------


def test_an_alert_whose_webhook_was_down_is_delivered_by_the_next_attempt_once(db_url, slow_webhook,
                                                                                 alert_receivers) -> None:  # fmt: skip
    alert = _alert("webhookdown")
    alert_id = send(db_url, alert)
    (row,) = _rows(db_url, alert)
    assert row["deliveries"]["webhook"] == "failed: HTTPStatusError: 503"
    assert row["deliveries"]["email"].startswith("sent to")
    slow_webhook["up"] = True
    later = _alert("nexttask")  # the next task's alert delivers what the last one left pending
    send(db_url, later)
    for a in (alert, later):
        assert [p["text"] for p in slow_webhook["posts"]].count(f"[WARNING] {a.title}") == 1
    (row,) = _rows(db_url, alert)
    assert row["id"] == alert_id
    assert row["deliveries"]["webhook"] == "posted to nightshift_alert_webhook (200)"
    assert row["delivered_at"] is not None  # no longer pending
    assert send(db_url, alert) is None  # delivered now: a retry is deduplicated
    deliver_pending(db_url)
    assert [p["text"] for p in slow_webhook["posts"]].count(f"[WARNING] {alert.title}") == 1
    assert _received(alert_receivers, alert)[0] == 1  # the mail, sent on the first attempt, was not repeated


def test_an_alert_recorded_before_an_outage_is_not_sent_again_by_the_replay(db_url, spool, alert_receivers) -> None:
    """A spooled copy of an alert Postgres holds as pending: replaying it marks the row delivered,
    and no deliverer sends it again."""
    alert = _alert("merge")
    at = dt.datetime.now(dt.UTC)
    with db.engine(db_url).begin() as conn:
        conn.execute(sa.insert(db.alerts).values(
            uid=uuid.uuid4().hex, created_at=at, severity="warning", kind=alert.kind, dedup_key=alert.key,
            title=alert.title, message=alert.text(), deliveries={"email": "sent to oncall@example.com"},
            claimed_until=at + dt.timedelta(hours=1), claimed_by="a worker that died"))  # fmt: skip
    spool.parent.mkdir(parents=True)
    spooled = {"uid": uuid.uuid4().hex, "created_at": at.isoformat(), "kind": alert.kind, "key": alert.key,
               "severity": "warning", "title": alert.title, "message": alert.text(), "link": None, "dag_id": None,
               "task_id": None, "run_id": None, "claimed_until": None, "claimed_by": None,
               "deliveries": {"email": "sent to oncall@example.com",
                              "webhook": "posted to nightshift_alert_webhook (200)"}}  # fmt: skip
    spool.write_text(json.dumps(spooled) + "\n")
    deliver_pending(db_url)
    assert not spool.exists()
    (row,) = _rows(db_url, alert)
    assert row["delivered_at"] is not None
    assert row["deliveries"]["webhook"] == "posted to nightshift_alert_webhook (200)"
    assert _received(alert_receivers, alert) == (0, 0)  # both had gone out before: nothing sent again
