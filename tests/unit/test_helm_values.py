"""docker/helm/values.yaml, for the official Airflow Helm chart: only keys nightshift's own schema of the
chart lists (docker/helm/values.schema.json), and settings nightshift itself would accept on the cluster."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

HELM = Path(__file__).resolve().parents[2] / "docker" / "helm"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def _env(values: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in values["env"]}


def test_the_values_use_only_keys_the_schema_lists(values) -> None:
    jsonschema.validate(values, json.loads((HELM / "values.schema.json").read_text()))


def test_the_schema_refuses_a_key_it_does_not_list(values) -> None:
    schema = json.loads((HELM / "values.schema.json").read_text())
    for typo in ({**values, "executer": "CeleryExecutor"},
                 {**values, "workers": {**values["workers"], "keda": {"enabled": True}}}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(typo, schema)


def test_celery_runs_nightshifts_image_on_a_postgres_given_by_secret(values) -> None:
    assert values["executor"] == "CeleryExecutor"
    assert values["images"]["airflow"]["repository"] != "apache/airflow"  # the image with the project baked in
    assert values["airflowVersion"] == values["defaultAirflowTag"] == "3.3.2"
    assert values["postgresql"]["enabled"] is False
    assert values["data"]["metadataSecretName"]
    assert {s["envName"]: s["secretName"] for s in values["secret"]}["DATABASE_URL"] == values["data"][
        "metadataSecretName"]  # fmt: skip
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key]
    assert not values["dags"]["gitSync"]["enabled"]
    assert not values["dags"]["persistence"]["enabled"]


def test_tune_and_evaluate_go_to_a_worker_set_that_serves_their_queue(values) -> None:
    from include.train.backends import training_queue

    queue = training_queue(_env(values))
    assert queue == "training"
    celery = values["workers"]["celery"]
    assert queue in {s["queue"] for s in celery["sets"]}
    assert celery["enableDefault"] is True
    assert celery["queue"] == "default"  # every other task
    assert "enabled" in celery["keda"]  # the KEDA-autoscaled option is there to turn on


def test_the_cluster_settings_pass_nightshifts_own_configuration_checks(values) -> None:
    from include.core.config import load_settings, tune_shards
    from include.train.backends import backend_from_env, require_pod_readable_lake

    env = _env(values)
    settings = load_settings({**env, "DATABASE_URL": "postgresql://u@db:5432/nightshift"})
    assert backend_from_env(env) == "kubernetes"
    require_pod_readable_lake(settings.lake_uri)  # raises for a lake on one machine's disk
    assert settings.lake_conn_id == "nightshift_lake"
    assert tune_shards(env) <= values["config"]["celery"]["worker_concurrency"]
    assert values["migrateDatabaseJob"]["args"][-1] == "exec python -m include.ops.cli prepare"
    if settings.source == "replay":  # no clock file is shared between pods: the clock is in the values
        assert settings.replay_start
        assert settings.replay_first_day
