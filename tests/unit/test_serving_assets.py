"""Container and cluster assets for serving: manifests validate, configs parse, flags are set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from include.serving.config import ModelEntry, read_models_config, write_models_config

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _manifests() -> dict[tuple[str, str], dict]:
    docs = yaml.safe_load_all((DOCKER / "k8s" / "tf-serving.yaml").read_text())
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def test_kubernetes_manifests_validate() -> None:
    result = subprocess.run(["kubernetes-validate", "--strict", str(DOCKER / "k8s" / "tf-serving.yaml")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(_manifests()) == [("Deployment", "tf-serving"), ("HorizontalPodAutoscaler", "tf-serving"),
                                    ("PersistentVolumeClaim", "nightshift-serving"), ("Service", "tf-serving"),
                                    ("Service", "tf-serving-replicas")]  # fmt: skip


def test_every_replica_reads_the_models_config_the_deploy_writes_on_the_shared_volume() -> None:
    """No ConfigMap that nothing updates: the deploy (in Airflow's containers, under the Helm values) writes
    models.config and the SavedModels onto one claim, which every serving pod mounts read-only."""
    from include.core.config import load_settings

    manifests = _manifests()
    claim = manifests["PersistentVolumeClaim", "nightshift-serving"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # written by the workers, read by every replica
    pod = manifests["Deployment", "tf-serving"]["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if "persistentVolumeClaim" in volume[m["name"]]]
    assert volume[mount["name"]]["persistentVolumeClaim"]["claimName"] == "nightshift-serving"
    assert mount["readOnly"] is True
    args = pod["containers"][0]["args"]
    assert f"--model_config_file={mount['mountPath']}/models.config" in args

    values = yaml.safe_load((DOCKER / "helm" / "values.yaml").read_text())
    [airflow_volume] = values["volumes"]
    assert airflow_volume["persistentVolumeClaim"]["claimName"] == "nightshift-serving"
    [airflow_mount] = [m for m in values["volumeMounts"] if m["name"] == airflow_volume["name"]]
    settings = load_settings({e["name"]: e["value"] for e in values["env"]})
    assert settings.models_config == Path(airflow_mount["mountPath"]) / "models.config"  # what the deploy writes
    # ...and the base path it writes into models.config is the model's folder as the serving pods see it.
    assert settings.serving_model_base == f"{mount['mountPath']}/{settings.model_name}"


def test_the_deploy_reaches_every_serving_pod_through_the_headless_service() -> None:
    from urllib.parse import urlsplit

    from include.core.config import load_settings

    manifests = _manifests()
    headless = manifests["Service", "tf-serving-replicas"]["spec"]
    deployment = manifests["Deployment", "tf-serving"]["spec"]
    assert headless["clusterIP"] == "None"  # its DNS name gives each pod's address
    assert headless["publishNotReadyAddresses"] is True  # a pod still loading is one the deploy must wait for
    assert headless["selector"] == deployment["selector"]["matchLabels"]
    values = yaml.safe_load((DOCKER / "helm" / "values.yaml").read_text())
    settings = load_settings({e["name"]: e["value"] for e in values["env"]})
    [replicas] = settings.serving_replicas
    assert replicas.startswith("dns:")
    parts = urlsplit(replicas.removeprefix("dns:"))
    assert parts.hostname == "tf-serving-replicas.nightshift.svc.cluster.local"
    assert parts.port == headless["ports"][0]["port"]


def test_deployment_is_ready_only_when_the_stable_model_is() -> None:
    container = _manifests()["Deployment", "tf-serving"]["spec"]["template"]["spec"]["containers"][0]
    assert any(a.startswith("--model_config_file_poll_wait_seconds=") for a in container["args"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/flight_delay/labels/stable"


def test_compose_runs_real_tf_serving_with_the_config_file() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(compose["services"]) == {"postgres", "redis", "nightshift-init", "api-server", "scheduler",
                                        "dag-processor", "triggerer", "worker-default", "worker-training", "predict",
                                        "tf-serving"}  # fmt: skip
    serving = compose["services"]["tf-serving"]
    assert serving["image"].startswith("tensorflow/serving:")
    assert "--model_config_file=/models/models.config" in serving["command"]
    assert any(c.startswith("--model_config_file_poll_wait_seconds=") for c in serving["command"])


def test_compose_airflow_deploys_to_the_tf_serving_service() -> None:
    from include.core.config import load_settings

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    serving_cmd = compose["services"]["tf-serving"]["command"]
    for name in ("worker-default", "predict"):  # the deploy's tasks run in a default worker's container
        service = compose["services"][name]
        settings = load_settings({k: str(v) for k, v in service["environment"].items()})
        assert settings.serving_url == "http://tf-serving:8501"
        assert f"--model_config_file={settings.models_config}" in serving_cmd  # the file the deploy DAG writes
        assert settings.serving_model_base.startswith("/models/")  # as TF Serving sees it: the shared volume
        assert "models:/models" in service["volumes"]


def test_compose_runs_each_airflow_component_from_the_image_after_one_init() -> None:
    """docker/compose.yaml: nightshift's image (built from docker/airflow.Dockerfile, nothing installed at
    start), `prepare` once in an init service, then each component as `nightshift component NAME` once the
    init succeeded, all sharing one Postgres, Airflow home and lake."""
    from include.ops.runtime import AIRFLOW_COMPONENTS

    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    init = services["nightshift-init"]
    assert init["command"] == ["python", "-m", "include.ops.cli", "prepare"]
    assert init["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in (*AIRFLOW_COMPONENTS, "worker-default", "worker-training", "predict"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/airflow.Dockerfile"}
        assert service["image"] == init["image"]
        assert service["depends_on"]["nightshift-init"] == {"condition": "service_completed_successfully"}
        if name in ("scheduler", "triggerer", "worker-default", "worker-training"):  # they report to the Task
            assert service["depends_on"]["api-server"] == {"condition": "service_healthy"}  # Execution API
        assert "pip" not in " ".join(service["command"])
        if name in AIRFLOW_COMPONENTS:
            assert service["command"] == ["python", "-m", "include.ops.cli", "component", name]
        env = service["environment"]
        assert env["DATABASE_URL"] == init["environment"]["DATABASE_URL"]
        assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]  # the password comes from the host, never the file
        assert env["NIGHTSHIFT_LOCAL_DIR"] == init["environment"]["NIGHTSHIFT_LOCAL_DIR"]
        assert f"state:{env['NIGHTSHIFT_LOCAL_DIR']}" in service["volumes"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-server:8080/execution/"
    assert (DOCKER / "airflow.Dockerfile").exists()


def test_compose_runs_celery_workers_for_both_queues_on_its_redis() -> None:
    from include.core.config import Executor, load_settings
    from include.ops.runtime import airflow_processes, runtime_env

    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    env = {k: str(v) for k, v in services["worker-default"]["environment"].items()}
    executor = Executor.from_env(env)
    assert executor.celery
    assert executor.broker_url == "redis://redis:6379/0"
    assert services["redis"]["image"].startswith("redis:")
    queues = {}
    for name in ("worker-default", "worker-training"):
        service = services[name]
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        worker = service["command"][-1]  # `nightshift component <worker>`: its arguments come from the profile
        argv, _ = airflow_processes(runtime_env(load_settings(env), "postgresql://x@db/x", env))[worker]
        queues[name] = argv[argv.index("--queues") + 1]
    assert queues == {"worker-default": "default", "worker-training": executor.training_queue}
    assert services["worker-default"]["deploy"]["replicas"] >= 2  # a lost worker's task has another to go to


def test_models_config_round_trips_through_the_protobuf(tmp_path) -> None:
    entry = ModelEntry("flight_delay", "/models/flight_delay", [3, 4], {"stable": 3, "canary": 4})
    text = write_models_config(tmp_path / "models.config", [entry])
    assert 'version_labels {\n      key: "canary"\n      value: 4' in text
    assert read_models_config(tmp_path / "models.config") == [entry]
    assert not list(tmp_path.glob(".*"))  # written atomically, no staging file left
