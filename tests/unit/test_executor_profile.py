"""The executor profiles: LocalExecutor by default, CeleryExecutor with `NIGHTSHIFT_EXECUTOR=celery`, the Celery
workers `make airflow` and the nights harness start, and what they record as their hostname."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from include.core.config import ConfigError, Executor, load_settings
from include.ops.runtime import AIRFLOW_COMPONENTS, airflow_processes, runtime_env, worker_hostname

URL = "postgresql://nightshift@127.0.0.1:5432/nightshift"


def _env(**extra: str) -> dict[str, str]:
    settings = load_settings({"NIGHTSHIFT_LOCAL_DIR": "/tmp/nightshift-executor-test"})
    return runtime_env(settings, URL, {"PATH": "/usr/bin", **extra})


def test_local_is_the_default_and_starts_no_worker() -> None:
    env = _env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "AIRFLOW__CELERY__BROKER_URL" not in env
    assert list(airflow_processes(env)) == list(AIRFLOW_COMPONENTS)


def test_celery_uses_redis_as_broker_and_the_same_postgres_for_results() -> None:
    env = _env(NIGHTSHIFT_EXECUTOR="celery")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/0"
    backend = env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert backend.startswith("db+postgresql+psycopg2://nightshift@127.0.0.1:5432/nightshift")
    assert env["NIGHTSHIFT_TRAINING_QUEUE"] == "training"  # tune and evaluate go to the training worker
    assert _env(NIGHTSHIFT_EXECUTOR="celery", NIGHTSHIFT_TRAINING_QUEUE="gpu")["NIGHTSHIFT_TRAINING_QUEUE"] == "gpu"


def test_celery_starts_two_default_workers_and_a_training_worker_with_a_slot_per_tuning_shard() -> None:
    env = _env(NIGHTSHIFT_EXECUTOR="celery", NIGHTSHIFT_TUNE_SHARDS="3")
    processes = airflow_processes(env)
    assert list(processes) == [*AIRFLOW_COMPONENTS, "worker-default-1", "worker-default-2", "worker-training"]
    argv, worker_env = processes["worker-training"]
    assert argv[:2] == ["celery", "worker"]
    assert argv[argv.index("--queues") + 1] == "training"
    assert argv[argv.index("--concurrency") + 1] == "3"  # the three shards run at once
    assert worker_env["NIGHTSHIFT_WORKER_NAME"] == "worker-training"
    assert worker_env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "include.ops.runtime.worker_hostname"
    default_argv, _ = processes["worker-default-2"]
    assert default_argv[default_argv.index("--queues") + 1] == "default"
    hostnames = {p[0][p[0].index("--celery-hostname") + 1] for name, p in processes.items() if name.startswith("w")}
    assert len(hostnames) == 3  # Celery refuses two workers of one name on a broker
    assert processes["scheduler"] == (["scheduler"], env)


@pytest.mark.parametrize(
    ("env", "says"),
    [({"NIGHTSHIFT_EXECUTOR": "kubernetes"}, "choose one of local, celery"),
     ({"NIGHTSHIFT_EXECUTOR": "celery", "NIGHTSHIFT_CELERY_BROKER_URL": "amqp://127.0.0.1//"}, "the broker is Redis"),
     ({"NIGHTSHIFT_EXECUTOR": "celery", "NIGHTSHIFT_CELERY_DEFAULT_WORKERS": "0"}, "at least one default worker"),
     ({"NIGHTSHIFT_EXECUTOR": "celery", "NIGHTSHIFT_TUNE_SHARDS": "two"}, "is not a whole number")],
)  # fmt: skip
def test_a_bad_executor_setting_is_a_clear_error(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Executor.from_env(env).workers(env)


def test_a_worker_records_task_instances_under_its_own_name(monkeypatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_WORKER_NAME", "worker-default-2")
    assert worker_hostname() == f"worker-default-2@{socket.getfqdn()}"
    monkeypatch.delenv("NIGHTSHIFT_WORKER_NAME")
    assert worker_hostname() == socket.getfqdn()


def test_the_training_pool_has_a_slot_per_tuning_shard(tmp_path: Path) -> None:
    from include.ops.airflow_settings import convert, pool_slots

    converted = convert({"airflow": {"pools": [{"pool_name": "gpu_training", "pool_slot": 1},
                                               {"pool_name": "serving_deploy", "pool_slot": 1}]}})  # fmt: skip
    pools = pool_slots(converted["pools"], {"NIGHTSHIFT_TUNE_SHARDS": "4"})
    assert pools["gpu_training"]["slots"] == 4
    assert pools["serving_deploy"]["slots"] == 1  # one deploy at a time, whatever the shards
    assert pool_slots(converted["pools"], {})["gpu_training"]["slots"] == 1


def test_redis_never_hands_a_running_task_to_a_second_worker() -> None:
    """Redis redelivers an unacknowledged task after the visibility timeout: it must outlast every task timeout."""
    from include.core.config import LONG_TASK_TIMEOUT_MIN, TASK_TIMEOUT_MIN

    env = _env(NIGHTSHIFT_EXECUTOR="celery")
    longest_s = 60 * max(TASK_TIMEOUT_MIN, *LONG_TASK_TIMEOUT_MIN.values())
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > longest_s


def test_the_brokers_password_stays_out_of_errors_and_reprs() -> None:
    env = {"NIGHTSHIFT_EXECUTOR": "celery", "NIGHTSHIFT_CELERY_BROKER_URL": "redis://:hunter2@10.0.0.5:6379/0",
           "NIGHTSHIFT_CELERY_DEFAULT_WORKERS": "0"}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        Executor.from_env(env)
    assert "hunter2" not in str(err.value)
    assert "hunter2" not in repr(Executor.from_env({**env, "NIGHTSHIFT_CELERY_DEFAULT_WORKERS": "2"}))
