"""The alert webhook's URL carries Slack's secret: it must reach neither the `alerts` table nor a log,
whether the post succeeds or fails, and Airflow's secrets masker must know it (task logs)."""

from __future__ import annotations

import http.server
import json
import logging
import threading

import pytest
import sqlalchemy as sa
from airflow.sdk._shared.secrets_masker import redact

from include import db
from include.core.alerts import Alert, send
from include.mlops.views import delivery_outcome

pytestmark = pytest.mark.integration
REPLY = "server-reply-REPLYTEXT-77"


@pytest.fixture
def receiver(monkeypatch):
    """A webhook receiver on a free port; `set(status)` chooses its answer; returns its secret path."""
    answer = {"status": 200}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(answer["status"])
            self.end_headers()
            self.wfile.write(f"{REPLY} for {self.path}".encode())

        def log_message(self, *args) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()

    def wire(status: int, secret: str) -> str:
        answer["status"] = status
        path = f"/services/T000/B000/{secret}"
        monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_ALERT_WEBHOOK", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": web.server_address[1], "schema": "http",
            "extra": {"path": path},
        }))  # fmt: skip
        return f"http://127.0.0.1:{web.server_address[1]}{path}"

    yield wire
    web.shutdown()


def _send(db_url: str, caplog, kind: str) -> tuple[dict, str, str]:
    """Send one alert; return its row, the whole `alerts` table as text, and everything logged."""
    for name in ["", "httpx", "httpcore", *logging.root.manager.loggerDict]:  # all loggers, some set quieter
        caplog.set_level(logging.DEBUG, logger=name)
    alert_id = send(db_url, Alert(kind=kind, key="k", severity="warning", title=f"{kind} probe", impact="x"))
    assert alert_id is not None
    with db.engine(db_url).connect() as conn:
        row = dict(conn.execute(sa.select(db.alerts).where(db.alerts.c.id == alert_id)).mappings().one())
        every_row = f"SELECT coalesce(string_agg(a::text, ' '), '') FROM {db.alerts.fullname} a"  # all columns
        table = conn.execute(sa.text(every_row)).scalar_one()
    logged = caplog.text + " ".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in caplog.records)
    return row, table, logged


@pytest.mark.parametrize("status", [404, 500])
def test_a_failed_post_keeps_the_secret_out_of_the_table_and_the_logs(db_url, receiver, caplog, status) -> None:
    url = receiver(status, f"SECRET-{status}-FAILED")
    row, table, logged = _send(db_url, caplog, f"secret_failed_{status}")
    assert row["deliveries"]["webhook"] == f"failed: HTTPStatusError: {status}"
    assert delivery_outcome(row["deliveries"]["webhook"]) == ("failed", "failed", "HTTPStatusError")
    assert f"webhook failed: HTTPStatusError: {status}" in logged  # the failure is still logged
    for secret in (f"SECRET-{status}-FAILED", "/services/T000", REPLY):
        assert secret not in table
        assert secret not in logged
    assert redact(f"POST {url}") == "POST ***"  # Airflow's masker hides it in task logs


def test_a_delivered_post_keeps_the_secret_out_of_the_table_and_the_logs(db_url, receiver, caplog) -> None:
    url = receiver(200, "SECRET-123-DELIVERED")
    row, table, logged = _send(db_url, caplog, "secret_delivered")
    assert row["deliveries"]["webhook"] == "posted to nightshift_alert_webhook (200)"
    assert delivery_outcome(row["deliveries"]["webhook"]) == ("delivered", "ok", "")
    assert "HTTP Request: POST ***" in logged  # httpx's own line, with the URL masked
    for secret in ("SECRET-123-DELIVERED", "/services/T000"):
        assert secret not in table
        assert secret not in logged
    assert redact(f"POST {url}") == "POST ***"
    assert redact("/services/T000/B000/SECRET-123-DELIVERED") == "***"
