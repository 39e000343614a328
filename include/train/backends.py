"""One function builds the training step for either backend; configuration chooses.

`TRAIN_BACKEND=kubernetes` runs `python -m include.trainer …` in a GPU pod with the
KubernetesPodOperator; `TRAIN_BACKEND=local` (the embedded default) runs the very same command
and arguments as a subprocess of the worker. Either way the step returns the CLI's JSON summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseOperator

BACKENDS = ("local", "kubernetes")
ENTRY_POINT = ["python", "-m", "include.trainer"]


@dataclass(frozen=True)
class PodSettings:
    image: str = "ghcr.io/nightshift/train:latest"
    namespace: str = "nightshift"
    gpu: str = "1"
    cpu: str = "4"
    memory: str = "16Gi"
    lake_secret: str = "nightshift-lake"
    node_selector_key: str = "nvidia.com/gpu.present"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PodSettings:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(**{k: env.get(f"NIGHTSHIFT_TRAIN_{k.upper()}", v) for k, v in defaults.__dict__.items()})


def tune_shards(env: Mapping[str, str] | None = None) -> int:
    """How many pods (or subprocesses) tune in parallel; read at parse time, cheap."""
    return max(1, int((os.environ if env is None else env).get("NIGHTSHIFT_TUNE_SHARDS", "1")))


def backend_from_env(env: Mapping[str, str] | None = None) -> str:
    backend = (os.environ if env is None else env).get("TRAIN_BACKEND", "local")
    if backend not in BACKENDS:
        raise ValueError(f"TRAIN_BACKEND={backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def run_training_cli(arguments: list[str]) -> dict[str, Any]:
    """The local backend: the entry point as a subprocess; its last stdout line is the summary."""
    command = [sys.executable, *ENTRY_POINT[1:], *arguments]
    print("running:", " ".join(command), flush=True)
    process = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if process.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}; see the log above")
    return json.loads(process.stdout.strip().splitlines()[-1])


class LocalTrainingOperator(BaseOperator):
    """Runs the training entry point in the worker, with templated arguments like the pod's."""

    template_fields = ("arguments",)

    def __init__(self, *, arguments: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = arguments

    def execute(self, context: Any) -> dict[str, Any]:
        return run_training_cli([str(a) for a in self.arguments])


def training_step(
    task_id: str, arguments: list[str], backend: str | None = None, shards: int = 1, **kwargs: Any
) -> Any:
    """The training step for `backend` (default: TRAIN_BACKEND), same command, same arguments.

    With `shards > 1` the step is a mapped task: one pod (or subprocess) per shard, each running
    `… --shard i --shards n`, so tuning fans out over several GPU nodes.
    """
    backend = backend or backend_from_env()
    operator, options = _operator(task_id, backend, **kwargs)
    if shards <= 1:
        return operator(arguments=arguments, **options)
    per_shard = [[*arguments, "--shard", str(i), "--shards", str(shards)] for i in range(shards)]
    return operator.partial(**options).expand(arguments=per_shard)


def _operator(task_id: str, backend: str, **kwargs: Any) -> tuple[type, dict[str, Any]]:
    if backend == "local":
        return LocalTrainingOperator, {"task_id": task_id, **kwargs}
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    pod = PodSettings.from_env()
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
        startup_timeout_seconds=900,
        schedule_timeout_seconds=1800,
        on_finish_action="delete_pod",
        get_logs=True,
        **kwargs,
    )
