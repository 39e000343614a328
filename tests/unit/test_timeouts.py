"""Timeouts everywhere: every task's `execution_timeout` comes from include/core/config.py, the local training
subprocess is killed with its process group at its limit, and the training pod carries Kubernetes' own limit."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
import time
from pathlib import Path

import pytest

from include.core.config import ConfigError, task_timeout

ROOT = Path(__file__).resolve().parents[2]
# A "trainer" that starts a grandchild in its own process group, writes both pids, and sleeps; it ignores SIGTERM,
# as a process stuck in native code may.
STUCK = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie, or a pid that is gone, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(path: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the child never wrote its pids"
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_training_subprocess_is_killed_with_its_group_at_its_limit(tmp_path, monkeypatch) -> None:
    from include.train import backends

    monkeypatch.setattr(backends, "KILL_GRACE_S", 0.5)
    pids = tmp_path / "pids"
    started = time.monotonic()
    with pytest.raises(backends.TrainingTimeout, match=r"ran past its time limit of 2 s and was killed with its pro"):
        backends.run_with_time_limit([sys.executable, "-c", STUCK, str(pids)], time_limit_s=2.0)
    took = time.monotonic() - started
    _wait_for(pids)
    child, grandchild = (int(p) for p in pids.read_text().split())
    assert 2.0 <= took < 2.0 + 0.5 + 3.0, took  # the limit, the SIGTERM grace, slack
    deadline = time.monotonic() + 5
    while (_alive(child) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), f"the training process {child} is still running"
    assert not _alive(grandchild), f"its child {grandchild} is still running"


def test_the_local_training_step_fails_naming_its_limit_and_the_setting(monkeypatch) -> None:
    """The operator's limit is its execution_timeout less a margin, so this error wins over Airflow's own."""
    from include.train import backends

    monkeypatch.setattr(backends, "ENTRY_POINT", ["python", "-c", "import time; time.sleep(60)"])
    operator = backends.LocalTrainingOperator(
        task_id="tune", arguments=["tune"], execution_timeout=dt.timedelta(seconds=2)
    )
    with pytest.raises(TimeoutError, match=r"time limit of 1\.8 s .*NIGHTSHIFT_TIMEOUT_TRAIN_TUNE_MIN"):
        operator.execute({})


def test_the_subprocess_limit_is_under_the_task_timeout() -> None:
    from include.train.backends import subprocess_time_limit

    assert subprocess_time_limit(dt.timedelta(hours=6)) == 6 * 3600 - 60
    assert subprocess_time_limit(dt.timedelta(minutes=5)) == 270
    assert subprocess_time_limit(task_timeout("nightshift_train", "evaluate")) < 90 * 60


def _train_dag(monkeypatch, **env: str):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.path.insert(0, str(ROOT / "dags"))
    try:
        return importlib.reload(importlib.import_module("nightshift_train")).nightshift_train()
    finally:
        sys.path.remove(str(ROOT / "dags"))


def test_the_training_pod_gets_kubernetes_run_time_and_startup_limits(monkeypatch) -> None:
    dag = _train_dag(monkeypatch, TRAIN_BACKEND="kubernetes", NIGHTSHIFT_LAKE="s3://lake",
                     NIGHTSHIFT_TIMEOUT_TRAIN_TUNE_MIN="45", NIGHTSHIFT_TRAIN_STARTUP_TIMEOUT_S="300")  # fmt: skip
    tune, evaluate = dag.get_task("tune"), dag.get_task("evaluate")
    assert type(tune).__name__ == "KubernetesPodOperator"
    assert tune.execution_timeout == dt.timedelta(minutes=45)
    assert tune.active_deadline_seconds == 45 * 60
    assert evaluate.active_deadline_seconds == 90 * 60 == evaluate.execution_timeout.total_seconds()
    assert tune.build_pod_request_obj(dry_run=True).spec.active_deadline_seconds == 45 * 60
    assert (tune.startup_timeout_seconds, tune.schedule_timeout_seconds) == (300, 1800)


def test_a_dag_default_and_a_long_step_are_set_from_the_environment(monkeypatch) -> None:
    dag = _train_dag(monkeypatch, NIGHTSHIFT_TIMEOUT_TRAIN_MIN="7", NIGHTSHIFT_TIMEOUT_TRAIN_EVALUATE_MIN="11")
    timeouts = {t.task_id: t.execution_timeout for t in dag.tasks}
    assert timeouts["build_dataset"] == timeouts["gate_and_register"] == dt.timedelta(minutes=7)
    assert timeouts["tune"] == dt.timedelta(minutes=360)  # a long step keeps its own unless named
    assert timeouts["evaluate"] == dt.timedelta(minutes=11)


@pytest.mark.parametrize(
    ("env", "dag_id", "task_id", "minutes"),
    [({}, None, None, 60), ({}, "nightshift_deploy", "promote", 60), ({}, "nightshift_train", "tune", 360),
     ({}, "nightshift_ingest", "materialize", 120), ({"NIGHTSHIFT_TIMEOUT_MIN": "20"}, "nightshift_monitor", "x", 20),
     ({"NIGHTSHIFT_TIMEOUT_MIN": "20", "NIGHTSHIFT_TIMEOUT_MONITOR_MIN": "30"}, "nightshift_monitor", "x", 30),
     ({"NIGHTSHIFT_TIMEOUT_TRAIN_MIN": "5"}, "nightshift_train", "tune", 360),
     ({"NIGHTSHIFT_TIMEOUT_TRAIN_TUNE_MIN": "1.5"}, "nightshift_train", "tune", 1.5)],
)  # fmt: skip
def test_the_most_specific_timeout_setting_wins(env, dag_id, task_id, minutes) -> None:
    assert task_timeout(dag_id, task_id, env) == dt.timedelta(minutes=minutes)


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "nan", "inf", "20000"])
def test_a_bad_timeout_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"NIGHTSHIFT_TIMEOUT_INGEST_MIN='{raw}' is not a number of minutes"):
        task_timeout("nightshift_ingest", "collect", {"NIGHTSHIFT_TIMEOUT_INGEST_MIN": raw})


def test_a_run_within_its_limit_returns_its_output() -> None:
    from include.train.backends import run_with_time_limit

    assert run_with_time_limit([sys.executable, "-c", "print('{\"trials\": 1}')"], time_limit_s=60) == '{"trials": 1}\n'


def test_airflows_own_database_connections_have_a_connect_timeout(tmp_path) -> None:
    from sqlalchemy.engine import make_url

    from include.core.config import load_settings
    from include.ops.runtime import runtime_env

    url = "postgresql://postgres@127.0.0.1:5432/nightshift"
    env = runtime_env(load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_DATABASE_URL": url}), url)
    sync = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert sync.drivername == "postgresql+psycopg2"
    assert sync.query["connect_timeout"] == "10"
    # asyncpg refuses libpq's option, so the async URL is given without it (asyncpg's own timeout is 60 s).
    assert make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"]).drivername == "postgresql+asyncpg"
    assert "connect_timeout" not in make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"]).query
