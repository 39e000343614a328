"""The chain on CeleryExecutor (`NIGHTSHIFT_EXECUTOR=celery`), as `make airflow` starts it: the four
components and the Celery workers (two on `default`, one on `training`), the broker on the machine's
Redis (127.0.0.1:6379), the result backend in the test Postgres.

A worker is killed mid-task the way a machine is lost: its whole session (the worker, its pool and the
task's process) gets SIGKILL. The scheduler finds the task without a heartbeat, fails that try, and
Airflow's retry runs on the other `default` worker, with the day ingested once, nothing lost or doubled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from include import db
from include.ops.nights_rig import session_members
from tests.airflow_stack import Airflow, running_airflow

pytestmark = pytest.mark.integration
BROKER_DB = 13  # a Redis database of this test's own, emptied before it starts
DAY = "2013-04-20"  # no other test uses April: the backtest test counts May 12-31 as never ingested


@pytest.fixture(scope="module")
def celery_airflow(db_url) -> Iterator[Airflow]:
    # Its own settings, not the session's `settings` fixture: that one keeps the environment of the test that
    # first asks for it, and the monitor tests need it to see the serving URL the `serving` fixture sets.
    from include.core.config import load_settings

    settings = load_settings()
    broker = f"redis://127.0.0.1:6379/{BROKER_DB}"
    client = redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as err:
        pytest.fail(f"Redis must run on 127.0.0.1:6379 for the Celery profile: {err}")
    from include.ops.runtime import runtime_env

    env = runtime_env(settings, db_url, {**os.environ, "NIGHTSHIFT_EXECUTOR": "celery",
                                         "NIGHTSHIFT_CELERY_BROKER_URL": broker})  # fmt: skip
    # A lost worker's task is found within 30 s (Airflow's default waits 5 minutes for its heartbeat).
    env |= {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"}  # fmt: skip
    extra = {k: v for k, v in env.items() if k.startswith(("AIRFLOW__", "NIGHTSHIFT_")) and os.environ.get(k) != v}
    with running_airflow(settings, "celery", env_extra=extra) as stack:
        yield stack
    client.flushdb()
    client.close()


def _task_instances(airflow: Airflow, run_id: str) -> list[dict]:
    return airflow.api("GET", f"/dags/nightshift_ingest/dagRuns/{run_id}/taskInstances").json()["task_instances"]


def _kill_session(pid: int) -> None:
    for member in [pid, *session_members(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def test_celery_workers_serve_their_queues_and_a_task_on_a_killed_worker_is_retried_on_another(
    celery_airflow: Airflow, db_url: str
) -> None:
    airflow = celery_airflow
    workers = sorted(n for n in airflow.procs if n.startswith("worker-"))
    assert workers == ["worker-default-1", "worker-default-2", "worker-training"]
    assert airflow.api("PATCH", "/dags/nightshift_ingest", json={"is_paused": False}).status_code == 200
    response = airflow.api("POST", "/dags/nightshift_ingest/dagRuns",
                           json={"logical_date": None, "conf": {"start_date": DAY, "end_date": DAY}})  # fmt: skip
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    victim, task_id = None, None
    deadline = time.monotonic() + 240
    while victim is None:  # the first task seen running on a default worker; its worker is the victim
        assert time.monotonic() < deadline, "no task ran on a Celery worker within 240 s"
        for ti in _task_instances(airflow, run_id):
            host = ti.get("hostname") or ""
            if ti["state"] == "running" and host.startswith("worker-default-") and ti["task_id"] != "collect":
                victim, task_id = host.split("@")[0], ti["task_id"]
                break
        time.sleep(0.3)
    _kill_session(airflow.procs[victim].pid)  # the worker, its pool and the task's process: a machine lost

    done = airflow.wait_for_run("nightshift_ingest", run_id, timeout_s=420)
    assert done["state"] == "success"
    tis = {ti["task_id"]: ti for ti in _task_instances(airflow, run_id)}
    assert tis[task_id]["try_number"] == 2, tis[task_id]  # the killed try failed, the retry succeeded
    survivor = tis[task_id]["hostname"].split("@")[0]
    assert survivor.startswith("worker-default-")
    assert survivor != victim
    with db.engine(db_url).connect() as conn:
        first = conn.execute(sa.text(
            "SELECT hostname, state FROM task_instance_history WHERE run_id = :r AND task_id = :t AND try_number = 1"),
            {"r": run_id, "t": task_id}).one()  # fmt: skip
        days = conn.execute(sa.text("SELECT partition_date FROM nightshift.ingestion_runs WHERE run_id = :r"),
                            {"r": run_id}).scalars().all()  # fmt: skip
        queues = dict(conn.execute(sa.text("SELECT task_id, queue FROM task_instance WHERE run_id = :r"),
                                   {"r": run_id}).all())  # fmt: skip
    assert first.hostname.split("@")[0] == victim
    assert first.state == "failed"
    assert days == [dt.date.fromisoformat(DAY)]  # ingested once: nothing lost, nothing doubled
    assert set(queues.values()) == {"default"}  # ingest has no training step
