"""Training pieces without a training run: feature contract, preprocessing, splits, gate, pod."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.contract.features import ALL_FEAST_FEATURES, LABEL_KEY, MODEL_FEATURES, POST_DEPARTURE_COLUMNS
from include.train.dataset import SPLITS, Window, split_frame
from include.train.gate import GateThresholds, run_gate, verdict

ROOT = Path(__file__).resolve().parents[2]


def test_feast_service_training_set_and_model_inputs_share_one_feature_list() -> None:
    from feature_repo import definitions
    from include.trainer.model import model_inputs

    served = [f.name for p in definitions.flight_delay_v2.feature_view_projections for f in p.features]
    assert sorted(served) == sorted(ALL_FEAST_FEATURES)
    assert sorted(model_inputs()) == sorted(MODEL_FEATURES)
    frame = _frame(days=10)
    for part in split_frame(frame, Window(dt.date(2013, 1, 10), 6, 2, 2)).values():
        assert set(MODEL_FEATURES) <= set(part.columns)
        assert not set(POST_DEPARTURE_COLUMNS) & set(MODEL_FEATURES)


def _frame(days: int, rows_per_day: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * rows_per_day
    frame = pd.DataFrame({f: rng.normal(size=n) for f in MODEL_FEATURES})
    for column in ("carrier", "origin", "dest", "tailnum"):
        frame[column] = rng.choice(["A", "B", "C"], size=n)
    frame["flight_date"] = [dt.date(2013, 1, 1) + dt.timedelta(days=i // rows_per_day) for i in range(n)]
    frame[LABEL_KEY] = rng.integers(0, 2, size=n)
    frame["flight"] = np.arange(n)
    frame["route"] = frame["origin"] + "-" + frame["dest"]
    frame["event_timestamp"] = pd.to_datetime(frame["flight_date"]).dt.tz_localize("UTC")
    return frame


def test_split_is_by_time_without_overlap() -> None:
    window = Window(end=dt.date(2013, 1, 10), train_days=6, validation_days=2, test_days=2)
    parts = split_frame(_frame(days=10), window)
    assert set(parts) == set(SPLITS)
    assert parts["train"]["flight_date"].max() < parts["validation"]["flight_date"].min()
    assert parts["validation"]["flight_date"].max() < parts["test"]["flight_date"].min()
    assert sorted(parts["test"]["flight_date"].unique()) == [dt.date(2013, 1, 9), dt.date(2013, 1, 10)]
    assert window.start == dt.date(2013, 1, 1)


def test_preprocessing_handles_unseen_categories_and_missing_values() -> None:
    from include.contract.inputs import to_model_inputs
    from include.trainer.model import FeatureStats, build_model

    train = _frame(days=3)
    model = build_model(FeatureStats.from_frame(train), {"units": 8, "layers": 1, "dropout": 0.0,
                                                         "embedding_dim": 4, "learning_rate": 1e-3})  # fmt: skip
    odd = train.head(4).copy()
    odd["carrier"] = ["ZZ", None, "", "A"]  # unseen, missing, empty, known
    odd["temp"] = np.nan
    odd["plane_year"] = [np.nan, 0.3, np.nan, -0.2]  # the synthetic features are standard normal
    predictions = model.predict(to_model_inputs(odd), verbose=0).reshape(-1)
    assert np.isfinite(predictions).all()
    assert ((predictions > 0) & (predictions < 1)).all()


@pytest.mark.slow  # trains and exports three networks
def test_every_family_trains_and_a_mix_of_them_exports_as_one_saved_model_by_every_method(tmp_path) -> None:
    import keras
    import tensorflow as tf

    from include.contract.inputs import to_model_inputs
    from include.contract.training import FAMILIES, METHODS
    from include.trainer.combine import choose_calibrator, choose_combiner
    from include.trainer.model import FeatureStats, FillMissing, build_ensemble, build_model, labels

    train = _frame(days=3)
    stats, x, y = FeatureStats.from_frame(train), to_model_inputs(train), labels(train)
    members = []
    for index, family in enumerate(FAMILIES):
        member = build_model(stats, {"family": family, "units": 8, "layers": 1, "dropout": 0.0, "embedding_dim": 4,
                                     "learning_rate": 1e-2})  # fmt: skip
        member.fit(x, y, epochs=1, batch_size=256, verbose=0)
        member.save(tmp_path / f"member_{index}.keras")  # as tune writes it and evaluate reads it back
        loaded = keras.saving.load_model(tmp_path / f"member_{index}.keras",
                                         custom_objects={"FillMissing": FillMissing})  # fmt: skip
        assert np.allclose(loaded.predict(x, verbose=0), member.predict(x, verbose=0), atol=1e-6)
        loaded.name = f"member_{index}"
        members.append(loaded)
    assert [any(layer.name.startswith("cross_") for layer in m.layers) for m in members] == [False, False, True]
    assert [any(layer.name == "wide_logit" for layer in m.layers) for m in members] == [False, True, False]
    member_p = np.column_stack([m.predict(x, verbose=0).reshape(-1) for m in members])
    days = train["flight_date"].astype(str).to_numpy()
    # Every ensemble method, each with a calibrator in turn, is ONE model equal to the same method and
    # calibrator computed in numpy (<= 1e-5); two of them, between them every layer, are exported too
    # (every real evaluation exports its own and checks the same parity).
    for method, calibration in zip(METHODS, ["none", "platt", "platt", "piecewise"], strict=True):
        combiner, _ = choose_combiner(method, y, member_p, days)
        calibrator, _ = choose_calibrator(calibration, y, combiner.predict(member_p), days)
        ensemble = build_ensemble(members, combiner, calibrator)
        in_memory = ensemble.predict(x, verbose=0).reshape(-1)
        expected = calibrator.predict(combiner.predict(member_p))
        assert np.max(np.abs(in_memory - expected)) <= 1e-5, method
        if method not in ("majority_voting", "stacking"):
            continue
        ensemble.export(str(tmp_path / method), format="tf_saved_model", verbose=False)
        signature = tf.saved_model.load(str(tmp_path / method)).signatures["serving_default"]
        exported = next(iter(signature(**{k: tf.constant(v) for k, v in x.items()}).values())).numpy().reshape(-1)
        assert np.max(np.abs(exported - in_memory)) <= 1e-5, method
    with pytest.raises(ValueError, match="unknown model family 'tree'"):
        build_model(stats, {"family": "tree", "units": 8, "layers": 1, "dropout": 0.0, "embedding_dim": 4,
                            "learning_rate": 1e-2})  # fmt: skip


METRICS = {"auc": 0.70, "ece": 0.05, "non_finite_predictions": 0, "predicted_positive_rate": 0.3}


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({}, []),
        ({"auc": 0.55}, ["auc_floor"]),
        ({"ece": 0.3}, ["ece_ceiling"]),
        ({"non_finite_predictions": 3}, ["finite_predictions"]),
        ({"predicted_positive_rate": 0.0}, ["positive_rate_low"]),
        ({"predicted_positive_rate": 0.99}, ["positive_rate_high"]),
    ],
)
def test_value_and_sanity_checks(change, failed) -> None:
    checks = run_gate({"metrics": {**METRICS, **change}, "slices": {}}, None, GateThresholds())
    assert [c.name for c in checks if not c.passed] == failed
    assert verdict(checks) == ("rejected" if failed else "blessed")
    assert next(c for c in checks if c.name == "champion").detail.startswith("no production model")


def test_change_checks_against_the_champion() -> None:
    champion = {"metrics": {**METRICS, "auc": 0.72}, "slices": {"origin": {"JFK": 0.70, "EWR": 0.71}}}
    worse = {"metrics": {**METRICS, "auc": 0.70}, "slices": {"origin": {"JFK": 0.60, "EWR": 0.71}}}
    checks = {c.name: c for c in run_gate(worse, champion, GateThresholds(auc_tolerance=0.01, slice_tolerance=0.03))}
    assert not checks["auc_vs_champion"].passed
    assert checks["auc_vs_champion"].threshold == pytest.approx(0.71)
    assert not checks["slice_origin_JFK"].passed
    assert checks["slice_origin_EWR"].passed
    assert "champion" not in checks


def test_thresholds_come_from_the_environment() -> None:
    assert GateThresholds.from_env({"NIGHTSHIFT_GATE_AUC_FLOOR": "0.7"}).auc_floor == 0.7


def test_the_kubernetes_backend_refuses_a_lake_on_this_machines_disk(monkeypatch, tmp_path) -> None:
    from airflow.sdk import DAG

    from include.core.config import ConfigError
    from include.train.backends import training_step

    for lake in (str(tmp_path / "lake"), (tmp_path / "lake").as_uri()):
        monkeypatch.setenv("NIGHTSHIFT_LAKE", lake)
        with DAG("pods_cannot_read_it", schedule=None), pytest.raises(ConfigError) as refused:
            training_step("tune", ["tune"], backend="kubernetes")
        assert "TRAIN_BACKEND=kubernetes" in str(refused.value)
        assert f"NIGHTSHIFT_LAKE={(tmp_path / 'lake').as_uri()}" in str(refused.value)
    monkeypatch.setenv("TRAIN_BACKEND", "local")  # the local backend reads the same lake: fine
    with DAG("local_reads_it", schedule=None):
        assert training_step("tune", ["tune"]).task_id == "tune"


def test_the_training_steps_go_to_the_training_queue_when_one_is_configured(monkeypatch) -> None:
    from airflow.sdk import DAG

    from include.train.backends import training_step

    monkeypatch.delenv("NIGHTSHIFT_TRAINING_QUEUE", raising=False)
    with DAG("default_queue", schedule=None):
        assert training_step("tune", ["tune"], backend="local").queue == "default"  # Airflow's default
    monkeypatch.setenv("NIGHTSHIFT_TRAINING_QUEUE", "training")
    with DAG("training_queue", schedule=None):
        assert training_step("tune", ["tune"], backend="local").queue == "training"
        mapped = training_step("tune_shards", ["tune"], backend="local", shards=2)
        assert mapped.partial_kwargs["queue"] == "training"


def test_gpu_pod_renders_and_validates(monkeypatch, tmp_path) -> None:
    import yaml
    from airflow.sdk import DAG
    from kubernetes.client import ApiClient

    from include.train.backends import training_step

    monkeypatch.setenv("NIGHTSHIFT_LAKE", "s3://lake")

    with DAG("render_pod", schedule=None):
        op = training_step("tune", ["tune", "--dataset", "s3://lake/datasets/r", "--out", "s3://lake/models/r"],
                           backend="kubernetes")  # fmt: skip
    pod = op.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert container.command == ["python", "-m", "include.trainer"]
    assert container.args[:3] == ["tune", "--dataset", "s3://lake/datasets/r"]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["memory"]
    assert container.resources.limits["cpu"]
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert container.env_from[0].secret_ref.name == "nightshift-lake"
    assert op.deferrable
    assert op.on_finish_action.value == "delete_pod"
    assert op.do_xcom_push
    assert op.startup_timeout_seconds
    assert op.schedule_timeout_seconds
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(ApiClient().sanitize_for_serialization(pod)))
    result = subprocess.run(["kubernetes-validate", "--strict", str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_backend_fails_the_task_when_the_entry_point_fails(tmp_path) -> None:
    """A real subprocess whose arguments the entry point refuses (before any TensorFlow import): the task
    fails naming the command. tests/integration/test_training_cli.py runs a successful `tune`."""
    from include.train.backends import run_training_cli

    with pytest.raises(RuntimeError, match=r"-m include\.trainer tune .* exited with 2"):
        run_training_cli(["tune", "--dataset", tmp_path.as_uri(), "--out", tmp_path.as_uri(), "--tuner", "annealing"])


@pytest.mark.parametrize("dockerfile", ["train.Dockerfile", "airflow.Dockerfile"])
def test_dockerfiles_lint_clean(dockerfile: str) -> None:
    result = subprocess.run(["hadolint", str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_airflow_image_bakes_in_the_project_and_runs_unprivileged() -> None:
    """docker/airflow.Dockerfile: the official image at the locked Airflow version, the locked requirements
    installed at build time, every folder a component reads copied in, and a non-root user last."""
    lines = [line.strip() for line in (ROOT / "docker" / "airflow.Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    locked = next(line for line in (ROOT / "constraints.txt").read_text().splitlines()
                  if line.startswith("apache-airflow=="))  # fmt: skip
    assert instructions[0] == f"FROM apache/airflow:{locked.split('==')[1]}-python3.11"
    assert "RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt" in instructions
    copied = {line.split()[-1].rstrip("/") for line in instructions if line.startswith("COPY")}
    assert {"dags", "plugins", "include", "feature_repo", "expectations"} <= copied
    for folder in ("dags", "plugins", "include", "feature_repo", "expectations"):
        assert (ROOT / folder).is_dir()
    user = [line for line in instructions if line.startswith("USER ")][-1]
    assert user.split()[1] not in ("root", "0")
    assert instructions.index(user) > max(i for i, line in enumerate(instructions) if line.startswith(("RUN", "COPY")))


def test_train_form_rejects_bad_input() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamsDict

    params: ParamsDict = DagBag(dag_folder=str(ROOT / "dags")).dags["nightshift_train"].params
    schema = params.get_param("tuner").schema
    assert schema["enum"] == ["hyperband", "bayesian", "random", "grid", "evolution"]
    with pytest.raises(ValueError, match="not one of"):
        params.get_param("tuner").resolve("simulated-annealing")
    assert json.loads(json.dumps(params.dump()))["test_days"] == 7


def test_tuning_fans_out_over_shards(monkeypatch) -> None:
    import importlib
    import sys

    monkeypatch.setenv("NIGHTSHIFT_TUNE_SHARDS", "3")
    monkeypatch.setenv("TRAIN_BACKEND", "kubernetes")
    monkeypatch.setenv("NIGHTSHIFT_LAKE", "s3://lake")  # the pods' lake
    sys.path.insert(0, str(ROOT / "dags"))
    try:
        module = importlib.reload(importlib.import_module("nightshift_train"))
        dag = module.nightshift_train()
    finally:
        sys.path.remove(str(ROOT / "dags"))
    tune = dag.get_task("tune")
    shards = tune.expand_input.value["arguments"]
    assert len(shards) == 3
    assert [a[-4:] for a in shards] == [["--shard", str(i), "--shards", "3"] for i in range(3)]
    assert tune.operator_class.__name__ == "KubernetesPodOperator"
    assert not hasattr(dag.get_task("evaluate"), "expand_input")


def test_evaluate_pools_the_best_members_of_all_shards(tmp_path) -> None:
    from include.trainer.evaluation import select_members

    for shard, aucs in enumerate([[0.70, 0.64], [0.72, 0.60]]):
        folder = tmp_path / f"shard_{shard}"
        folder.mkdir()
        members = [{"index": i, "val_auc": auc} for i, auc in enumerate(aucs)]
        (folder / "tune.json").write_text(json.dumps({"members": members}))
    chosen = select_members(tmp_path)
    exported = [p.relative_to(tmp_path).as_posix() for p, _ in chosen]
    assert exported == ["shard_1/member_0.keras", "shard_0/member_0.keras"]


@pytest.mark.slow  # fits the baseline's grid twice (about 15 s on 2 cores)
def test_the_gbdt_baseline_searches_on_validation_refits_on_both_and_repeats_itself() -> None:
    from include.trainer.evaluation import GBDT_GRID, gbdt_baseline

    frame = _frame(days=30, rows_per_day=60, seed=3)
    noise = np.random.default_rng(4).normal(size=len(frame))
    frame[LABEL_KEY] = (frame["temp"] + 0.5 * frame["carrier"].eq("A") + noise > 0.8).astype(int)
    train, validation, test = frame.iloc[:1200], frame.iloc[1200:1500], frame.iloc[1500:]
    first = gbdt_baseline(train, validation, test, seed=7)
    again = gbdt_baseline(train.sample(frac=1.0, random_state=1).sort_index(), validation, test, seed=7)
    assert first["auc"] == again["auc"]
    assert np.array_equal(first["p"], again["p"])
    assert len(first["trials"]) == len(GBDT_GRID)
    assert first["best"]["val_auc"] == max(t["val_auc"] for t in first["trials"])
    assert 1 <= first["best"]["trees"] <= 500
    assert first["auc"] > 0.7


def test_permutation_importance_ranks_the_input_the_model_uses_first_with_an_interval() -> None:
    from include.contract.inputs import to_model_inputs
    from include.trainer.evaluation import permutation_importance

    frame = _frame(days=10, rows_per_day=100, seed=5)
    y = (frame["temp"] + 0.3 * np.random.default_rng(6).normal(size=len(frame)) > 0).astype(int).to_numpy()

    def predict(x: dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x["temp"].astype(float)))

    rows = permutation_importance(predict, to_model_inputs(frame), y, seed=1, repeats=4)
    assert next(r["feature"] for r in rows) == "temp"
    assert rows[0]["ci_low"] > 0.2
    assert rows[0]["ci_low"] <= rows[0]["auc_drop"] <= rows[0]["ci_high"]
    assert {r["feature"] for r in rows} == set(MODEL_FEATURES)
    assert all(r["auc_drop"] == 0.0 for r in rows[1:])  # inputs the model ignores cost nothing


def test_evaluate_judges_refit_members_by_their_held_out_twins_and_falls_back_to_the_member(tmp_path) -> None:
    from include.trainer.evaluation import select_members

    shard = tmp_path / "shard_0"
    shard.mkdir()
    members = [{"index": 0, "val_auc": 0.70}, {"index": 1, "val_auc": 0.72}, {"index": 2, "val_auc": 0.60}]
    (shard / "tune.json").write_text(json.dumps({"members": members[:2]}))
    (tmp_path / "tune.json").write_text(json.dumps({"members": members[2:]}))
    for name in ("member_0.keras", "member_0.holdout.keras", "member_1.keras", "member_1.holdout.keras"):
        (shard / name).write_bytes(b"")
    (tmp_path / "member_2.keras").write_bytes(b"")  # tuned before refitting existed: no held-out twin
    chosen = select_members(tmp_path)
    assert chosen == [(shard / "member_1.keras", shard / "member_1.holdout.keras"),
                      (shard / "member_0.keras", shard / "member_0.holdout.keras")]  # fmt: skip
    (shard / "tune.json").write_text(
        json.dumps({"members": members[:2], "warm_members": [{"index": "w0", "val_auc": 0.5}]})
    )
    (shard / "member_w0.keras").write_bytes(b"")
    assert select_members(tmp_path, "warm_members") == [(shard / "member_w0.keras", shard / "member_w0.keras")]
    assert select_members(tmp_path) == chosen  # the warm members are a group of their own
