"""One function builds the training step for either backend; configuration chooses.

`TRAIN_BACKEND=kubernetes` runs `python -m include.trainer …` in a GPU pod with the
KubernetesPodOperator; `TRAIN_BACKEND=local` (the embedded default) runs the very same command
and arguments as a subprocess of the worker. Either way the step returns the CLI's JSON summary.

Either way the run has a time limit under the task's `execution_timeout`: the subprocess (with its
process group) is killed a little before it, so the task fails naming the limit; the pod gets it
as `active_deadline_seconds`, so Kubernetes kills it even if Airflow lost track of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseOperator

from include.core.assets import TRAIN_DAG
from include.core.config import ConfigError, env_overrides, load_settings, task_timeout
from include.core.lake import credentials_env

BACKENDS = ("local", "kubernetes")
ENTRY_POINT = ["python", "-m", "include.trainer"]
# The subprocess is killed this long before the task's execution_timeout, so its own clear error wins.
LIMIT_MARGIN_S = 60.0
# Between SIGTERM to the process group and SIGKILL: TensorFlow gets a moment to exit on its own.
KILL_GRACE_S = 10.0


class TrainingTimeout(TimeoutError):
    """The training run outlived its time limit and was killed (a TimeoutError: the task retries)."""


@dataclass(frozen=True)
class PodSettings:
    image: str = "ghcr.io/nightshift/train:latest"
    namespace: str = "nightshift"
    gpu: str = "1"
    cpu: str = "4"
    memory: str = "16Gi"
    lake_secret: str = "nightshift-lake"
    node_selector_key: str = "nvidia.com/gpu.present"
    schedule_timeout_s: int = 1800  # pending until a GPU node is free (or autoscaled)
    startup_timeout_s: int = 900  # scheduled to running: mostly the image pull

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PodSettings:
        """Each field is `NIGHTSHIFT_TRAIN_<FIELD>`."""
        return cls(**env_overrides(cls(), "NIGHTSHIFT_TRAIN_", env))


def backend_from_env(env: Mapping[str, str] | None = None) -> str:
    backend = (os.environ if env is None else env).get("TRAIN_BACKEND", "local")
    if backend not in BACKENDS:
        raise ValueError(f"TRAIN_BACKEND={backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def run_training_cli(arguments: list[str], time_limit_s: float | None = None) -> dict[str, Any]:
    """The local backend: the entry point as a subprocess; its last stdout line is the summary.

    `time_limit_s` defaults to the limit under the train DAG's timeout of the step (`tune`, `evaluate`).
    """
    command = [sys.executable, *ENTRY_POINT[1:], *arguments]
    if time_limit_s is None:
        time_limit_s = subprocess_time_limit(task_timeout(TRAIN_DAG, arguments[0] if arguments else None))
    hint = f"raise NIGHTSHIFT_TIMEOUT_TRAIN_{arguments[0].upper()}_MIN or lower the budget" if arguments else ""
    stdout = run_with_time_limit(
        command, time_limit_s, hint=hint, env={**os.environ, **credentials_env(load_settings())}
    )
    return json.loads(stdout.strip().splitlines()[-1])


def subprocess_time_limit(execution_timeout: dt.timedelta) -> float:
    """Seconds the subprocess may run: LIMIT_MARGIN_S under the task's timeout (a tenth of a short one)."""
    total = execution_timeout.total_seconds()
    return max(total - LIMIT_MARGIN_S, total * 0.9)


def run_with_time_limit(
    command: Sequence[str], time_limit_s: float, hint: str = "", env: Mapping[str, str] | None = None
) -> str:
    """Run `command` in a process group of its own and return its stdout; past `time_limit_s` (or when this
    process is interrupted, e.g. by Airflow's own timeout) the whole group is killed, so no trainer outlives
    its step. A non-zero exit or the limit raises, naming the command."""
    shown = " ".join(command)
    print("running:", shown, f"(time limit {_duration(time_limit_s)})", flush=True)
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
        env=None if env is None else dict(env),
    )
    try:
        stdout, _ = process.communicate(timeout=time_limit_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise TrainingTimeout(
            f"`{shown}` ran past its time limit of {_duration(time_limit_s)} and was killed with its "
            f"process group{'; ' + hint if hint else ''}"
        ) from None
    except BaseException:
        _kill_group(process)
        raise
    finally:
        _signal_group(process.pid, signal.SIGKILL)  # whatever it left behind
    if process.returncode != 0:
        raise RuntimeError(f"`{shown}` exited with {process.returncode}; see the log above")
    return stdout


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:g} s"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the group, then SIGKILL it after KILL_GRACE_S; reap the leader."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.communicate(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.communicate()


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what the child runs before exec to get SIGKILL when the worker dies (its new session would
    outlive it). Resolved here, in the parent: the child only calls into libc, it imports and loads nothing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class LocalTrainingOperator(BaseOperator):
    """Runs the training entry point in the worker, with templated arguments like the pod's."""

    template_fields = ("arguments",)

    def __init__(self, *, arguments: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = arguments

    def execute(self, context: Any) -> dict[str, Any]:
        timeout = self.execution_timeout or task_timeout(TRAIN_DAG, self.task_id)
        return run_training_cli([str(a) for a in self.arguments], time_limit_s=subprocess_time_limit(timeout))


def training_queue(env: Mapping[str, str] | None = None) -> str | None:
    """`NIGHTSHIFT_TRAINING_QUEUE`: the Celery queue the training steps go to (a worker set of their own,
    docker/helm/values.yaml); unset, they stay on Airflow's default queue. LocalExecutor ignores queues."""
    return (os.environ if env is None else env).get("NIGHTSHIFT_TRAINING_QUEUE") or None


def training_step(
    task_id: str, arguments: list[str], backend: str | None = None, shards: int = 1, **kwargs: Any
) -> Any:
    """The training step for `backend` (default: TRAIN_BACKEND), same command, same arguments, on the
    training queue when one is configured.

    With `shards > 1` the step is a mapped task: one pod (or subprocess) per shard, each running
    `… --shard i --shards n`, so tuning fans out over several GPU nodes.
    """
    backend = backend or backend_from_env()
    queue = training_queue()
    if queue and "queue" not in kwargs:
        kwargs["queue"] = queue
    operator, options = _operator(task_id, backend, **kwargs)
    if shards <= 1:
        return operator(arguments=arguments, **options)
    per_shard = [[*arguments, "--shard", str(i), "--shards", str(shards)] for i in range(shards)]
    return operator.partial(**options).expand(arguments=per_shard)


def require_pod_readable_lake(lake_uri: str) -> None:
    """A pod runs on another machine: it cannot read a lake on this machine's disk."""
    if not lake_uri.startswith("s3://"):  # the object store include/core/lake.py reads and writes
        raise ConfigError(
            f"TRAIN_BACKEND=kubernetes needs a lake the training pods can read, but NIGHTSHIFT_LAKE={lake_uri} "
            "is on this machine's disk: set NIGHTSHIFT_LAKE to an object store (s3://bucket/prefix), or use "
            "TRAIN_BACKEND=local"
        )


def _operator(task_id: str, backend: str, **kwargs: Any) -> tuple[type, dict[str, Any]]:
    if backend == "local":
        return LocalTrainingOperator, {"task_id": task_id, **kwargs}
    require_pod_readable_lake(load_settings().lake_uri)
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    pod = PodSettings.from_env()
    # Kubernetes' own run-time limit of the pod, counted from its start: Airflow's execution_timeout
    # fails the task, this kills the pod even if the worker or the triggerer lost track of it.
    limit = kwargs.get("execution_timeout") or task_timeout(TRAIN_DAG, task_id)
    return KubernetesPodOperator, dict(
        task_id=task_id,
        name=f"nightshift-{task_id.replace('_', '-')}",
        namespace=pod.namespace,
        image=pod.image,
        cmds=ENTRY_POINT,
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": pod.cpu, "memory": pod.memory, "nvidia.com/gpu": pod.gpu},
            limits={"cpu": pod.cpu, "memory": pod.memory, "nvidia.com/gpu": pod.gpu},
        ),
        node_selector={pod.node_selector_key: "true"},
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=pod.lake_secret))],
        env_vars={"TF_CPP_MIN_LOG_LEVEL": "2", "NIGHTSHIFT_XCOM_FILE": "/airflow/xcom/return.json"},
        do_xcom_push=True,
        deferrable=True,
        startup_timeout_seconds=pod.startup_timeout_s,
        schedule_timeout_seconds=pod.schedule_timeout_s,
        active_deadline_seconds=int(limit.total_seconds()),
        on_finish_action="delete_pod",
        get_logs=True,
        **kwargs,
    )
