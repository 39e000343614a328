"""Serving under `make airflow` is supervised: the local serving process, killed, answers again on the
same URL, and an alert says it died and was restarted (`include.ops.cli.supervised_serving`)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import sqlalchemy as sa

from include import db
from include.core.config import load_settings
from include.db import alerts
from include.serving.process import is_up

pytestmark = pytest.mark.integration

BACK_WITHIN_S = 60


def test_killed_serving_comes_back_on_the_same_url_and_alerts(tmp_path, db_url, alert_receivers,
                                                              monkeypatch) -> None:  # fmt: skip
    from include.ops.cli import supervised_serving

    env = {**os.environ, "NIGHTSHIFT_SERVING_DIR": str(tmp_path / "serving"),
           "NIGHTSHIFT_SERVING_URL": "http://127.0.0.1:0", "DATABASE_URL": db_url}  # fmt: skip
    # The channels' connections are in the environment given to Airflow's components (as under `make
    # airflow` and the nights harness), not in this process's own: the alert must still go out.
    for conn in ("AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_NIGHTSHIFT_ALERT_WEBHOOK"):
        monkeypatch.delenv(conn)
    settings = load_settings(env)
    with supervised_serving(settings, env) as (serving,):
        url, first = serving.url, serving.pid
        assert first is not None
        assert is_up(url)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + BACK_WITHIN_S
        while not (serving.pid not in (None, first) and is_up(url)):
            assert time.monotonic() < deadline, f"serving did not answer again on {url} within {BACK_WITHIN_S} s"
            time.sleep(0.2)
        rows: list = []
        while not (rows and {"email", "webhook"} <= set(rows[0].deliveries)):  # it goes out right after the restart
            assert time.monotonic() < deadline, f"no serving_restarted alert within {BACK_WITHIN_S} s"
            with db.engine(db_url).connect() as conn:
                rows = conn.execute(
                    sa.select(alerts.c.severity, alerts.c.title, alerts.c.deliveries).where(
                        alerts.c.kind == "serving_restarted", alerts.c.dedup_key.like(f"%:{url}:pid {first}")
                    )
                ).all()  # fmt: skip
            time.sleep(0.2)
        assert serving.restarts == 1
        assert len(rows) == 1, rows
        assert rows[0].severity == "warning"
        assert "killed by SIGKILL" in rows[0].title
        assert url in rows[0].title
        # Delivered on both channels, not "skipped: no connection" (the supervisor runs outside any task).
        assert rows[0].deliveries["email"].startswith("sent to"), rows[0].deliveries
        assert rows[0].deliveries["webhook"].startswith("posted to"), rows[0].deliveries
        assert any(rows[0].title in m["subject"] for m in alert_receivers["mails"])
        second = serving.pid
    assert second is not None
    deadline = time.monotonic() + 30
    while is_up(url):  # stopped with the block, not left running
        assert time.monotonic() < deadline, f"serving still answers on {url} after the supervisor stopped"
        time.sleep(0.2)
