"""Configuration from the environment, and airflow_settings.yaml conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from include.core.calendar import RangeError, days_between, resolve_days
from include.core.config import ConfigError, load_settings
from include.ops.airflow_settings import SettingsFileError, convert

ROOT_SETTINGS = Path(__file__).resolve().parents[2] / "airflow_settings.yaml"


def test_defaults_need_nothing_set(tmp_path) -> None:
    settings = load_settings({"NIGHTSHIFT_HOME": str(tmp_path)})
    assert settings.source == "replay"
    assert settings.lake_uri == (tmp_path / ".local" / "lake").as_uri()
    assert settings.database_url is None
    assert (settings.bootstrap_end - settings.bootstrap_start).days == 89


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NIGHTSHIFT_SOURCE": "ftp"}, "choose one of replay, landing"),
        ({"NIGHTSHIFT_BOOTSTRAP_START": "2013-13-01"}, "is not a date"),
        ({"NIGHTSHIFT_BOOTSTRAP_START": "2013-03-01", "NIGHTSHIFT_BOOTSTRAP_END": "2013-01-01"}, "before"),
    ],
)
def test_bad_settings_say_what_is_wrong(env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_missing_database_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings({"NIGHTSHIFT_HOME": str(tmp_path)}).require_database_url()


def test_date_ranges() -> None:
    import datetime as dt

    assert resolve_days({"start_date": "2013-01-30", "end_date": "2013-02-02"}, None, None) == [
        dt.date(2013, 1, 30) + dt.timedelta(days=n) for n in range(4)
    ]
    assert resolve_days({"start_date": "2013-01-30", "end_date": None}, None, None) == [dt.date(2013, 1, 30)]
    with pytest.raises(RangeError, match="before"):
        days_between(dt.date(2013, 2, 1), dt.date(2013, 1, 1))


def test_data_interval_maps_to_new_york_days() -> None:
    import datetime as dt

    import pendulum

    tz = pendulum.timezone("America/New_York")
    start = pendulum.datetime(2026, 11, 21, tz=tz)
    assert resolve_days({}, start, start.add(days=1)) == [dt.date(2026, 11, 21)]


def test_repo_settings_file_converts_to_airflow_import_shapes() -> None:
    converted = convert(yaml.safe_load(ROOT_SETTINGS.read_text()))
    assert converted["pools"]["feast_materialize"] == {
        "slots": 1,
        "description": "One writer at a time into the Feast online store.",
        "include_deferred": False,
    }
    s3 = converted["connections"]["nightshift_lake_s3"]
    assert s3["conn_type"] == "aws"
    assert json.loads(s3["extra"])["endpoint_url"].startswith("http://127.0.0.1")
    assert converted["variables"]["nightshift_oncall_email"]["value"] == "oncall@example.com"


def test_settings_file_errors_name_the_entry() -> None:
    with pytest.raises(SettingsFileError, match="lacks \\['pool_slot'\\]"):
        convert({"airflow": {"pools": [{"pool_name": "p"}]}})


def test_a_renamed_deploy_setting_is_refused_with_its_new_name() -> None:
    from include.core.config import DeployPolicy

    assert DeployPolicy.from_env({"NIGHTSHIFT_DEPLOY_MAX_LATENCY_RATIO": "2.5"}).max_latency_ratio == 2.5
    with pytest.raises(ConfigError, match="NIGHTSHIFT_DEPLOY_MAX_P99_RATIO is now NIGHTSHIFT_DEPLOY_MAX_LATENCY_RATIO"):
        DeployPolicy.from_env({"NIGHTSHIFT_DEPLOY_MAX_P99_RATIO": "2.5"})


def test_an_alert_mail_escapes_what_the_alert_carries() -> None:
    from include.core.alerts import Alert, _mail_body

    body = _mail_body(Alert(kind="drift", key="k", severity="warning", title="<script>alert(1)</script>",
                            impact="a & b", details=["<img src=x onerror=y>"]))  # fmt: skip
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=y&gt;" in body
    assert body.startswith("<pre style='font-family:monospace'>")


def test_the_nightly_budget_reads_the_environment() -> None:
    """One budget, read from NIGHTSHIFT_NIGHTLY_*: what scheduled runs train with (the form's defaults,
    tests/dags) and what `make demo` trains with, so the nights and the demo are the same training."""
    import dataclasses

    from include.core.config import NightlyTraining

    budget = NightlyTraining.from_env({})
    assert dataclasses.asdict(budget) == {"train_days": 60, "test_days": 7, "tuner": "hyperband", "max_trials": 6,
                                          "epochs": 4, "ensemble_size": 2, "ensemble_method": "auto",
                                          "warm_start": "both", "tree_member": False, "seed": 7}  # fmt: skip
    smaller = NightlyTraining.from_env({"NIGHTSHIFT_NIGHTLY_EPOCHS": "2", "NIGHTSHIFT_NIGHTLY_TUNER": "random"})
    assert (smaller.epochs, smaller.tuner, smaller.train_days) == (2, "random", 60)
    assert NightlyTraining.from_env({"NIGHTSHIFT_NIGHTLY_TREE_MEMBER": "true"}).tree_member is True
    assert NightlyTraining.from_env({"NIGHTSHIFT_NIGHTLY_TREE_MEMBER": "0"}).tree_member is False


@pytest.mark.parametrize(("env", "message"), [
    ({"NIGHTSHIFT_NIGHTLY_TUNER": "annealing"}, "choose one of hyperband, bayesian, random, grid, evolution"),
    ({"NIGHTSHIFT_NIGHTLY_TRAIN_DAYS": "6"}, "train_days >= 7"),
    ({"NIGHTSHIFT_NIGHTLY_ENSEMBLE_METHOD": "bagging"}, "choose one of auto, averaging, soft_voting, majority_voting"),
    ({"NIGHTSHIFT_NIGHTLY_WARM_START": "always"}, "choose one of off, champion, both"),
    ({"NIGHTSHIFT_NIGHTLY_EPOCHS": "0"}, "the rest >= 1"),
    ({"NIGHTSHIFT_NIGHTLY_EPOCHS": "four"}, "NIGHTSHIFT_NIGHTLY_EPOCHS='four' is not a int"),
    ({"NIGHTSHIFT_NIGHTLY_TREE_MEMBER": "maybe"}, "NIGHTSHIFT_NIGHTLY_TREE_MEMBER='maybe' is not a bool"),
])  # fmt: skip
def test_a_bad_nightly_budget_is_refused_by_name(env, message) -> None:
    from include.core.config import NightlyTraining

    with pytest.raises(ConfigError, match=message):
        NightlyTraining.from_env(env)


def test_the_prediction_services_batching_reads_the_environment_and_refuses_zero() -> None:
    from include.core.config import PredictService

    assert (PredictService.from_env({}).batch_max_flights, PredictService.from_env({}).batches_in_flight) == (256, 2)
    told = PredictService.from_env({"NIGHTSHIFT_PREDICT_BATCH_MAX_FLIGHTS": "32",
                                    "NIGHTSHIFT_PREDICT_BATCHES_IN_FLIGHT": "1"})  # fmt: skip
    assert (told.batch_max_flights, told.batches_in_flight) == (32, 1)
    for name in ("NIGHTSHIFT_PREDICT_BATCH_MAX_FLIGHTS", "NIGHTSHIFT_PREDICT_BATCHES_IN_FLIGHT"):
        with pytest.raises(ConfigError, match="at least 1"):
            PredictService.from_env({name: "0"})


def test_an_s3_lake_names_its_feature_sources_s3a_and_serves_from_its_serving_prefix(tmp_path) -> None:
    s3 = load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_LAKE": "s3://bucket/lake"})
    # s3a:// reaches the fsspec filesystem include/core/feast.py registers with DuckDB; s3:// would make
    # ibis download DuckDB's httpfs extension.
    assert (
        s3.feature_source_glob("carrier_delay_history_fv")
        == "s3a://bucket/lake/features/carrier_delay_history/*.parquet"
    )
    assert s3.serving_model_base == "s3://bucket/lake/serving/flight_delay"
    pinned = load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_LAKE": "s3://bucket/lake",
                            "NIGHTSHIFT_SERVING_MODEL_BASE_PATH": "/serving/flight_delay"})  # fmt: skip
    assert pinned.serving_model_base == "/serving/flight_delay"  # a volume the replicas mount, on Kubernetes
    local = load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path)})
    assert (
        local.feature_source_glob("carrier_delay_history_fv")
        == f"{tmp_path}/lake/features/carrier_delay_history/*.parquet"
    )
    assert local.serving_model_base == str(tmp_path / "serving" / "flight_delay")


def test_a_file_lake_gives_the_trainer_no_credentials(tmp_path) -> None:
    from include.core.lake import credentials_env

    assert credentials_env(load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path)})) == {}
    # An s3:// lake without a connection: the AWS SDK's own chain (instance role, ~/.aws) applies.
    assert credentials_env(load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_LAKE": "s3://b/l"})) == {}


def test_relative_names_are_the_same_for_local_and_s3_paths(tmp_path) -> None:
    from airflow.sdk import ObjectStoragePath

    from include.core.lake import relative

    assert relative(tmp_path / "m" / "variables" / "v.index", tmp_path / "m") == "variables/v.index"
    root = ObjectStoragePath("s3://bucket/lake/models/r/export")
    assert relative(root / "variables" / "v.index", root) == "variables/v.index"
    with pytest.raises(ValueError, match="is not under"):
        relative(ObjectStoragePath("s3://bucket/elsewhere/x"), root)
