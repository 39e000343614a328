"""The deploy DAG against the local TF-Serving-compatible server, started as `make demo` starts it.

Versions are registered from the model the `trained` fixture made (an identical copy, so its
canary is healthy), from an untrained model of the same signature (a canary that shifts
predictions), and from a SavedModel with a corrupt `saved_model.pb`; each is fingerprinted as the
gate fingerprints what it blesses. Attacks (a refused status, tampered files, a model that crashes
or hangs the infra validation sandbox) are in tests/security/. Each test registers the
versions it deploys and brings serving to the state it starts from (`no_model_served`, `stable`),
so it passes alone as well as in any order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import threading
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from include import db
from include.core import lake
from include.core.config import DeployPolicy, Settings
from include.db import alerts, deployments, model_versions
from include.deploy.steps import (
    DeployConflict,
    DeployError,
    canary,
    infra_validate,
    plan,
    promote,
    push,
    retire,
    serving_lock,
)
from include.serving.client import ServingError, client_for
from include.serving.config import WARMUP_FILE, read_models_config, write_models_config
from include.serving.state import ServingState, read_state
from include.train.registry import get_version, set_status
from tests.factories import register_copy
from tests.server_fixtures import wait_for_server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clients_closed")]


@pytest.fixture(scope="module")
def artifacts(trained, tmp_path_factory) -> dict[str, str]:
    """SavedModels to register versions from: the trained one, an untrained one, a corrupt copy."""
    from include.trainer.io import read_split
    from include.trainer.model import FeatureStats, build_model

    _, row, _ = trained
    work = tmp_path_factory.mktemp("artifacts")
    untrained = work / "untrained"
    stats = FeatureStats.from_frame(read_split(row["dataset_uri"], "train").head(2000))
    hp = {"units": 8, "layers": 1, "dropout": 0.0, "embedding_dim": 4, "learning_rate": 1e-3}
    build_model(stats, hp).export(str(untrained), format="tf_saved_model", verbose=False)
    corrupt = work / "corrupt"
    shutil.copytree(row["artifact_uri"].removeprefix("file://"), corrupt)
    (corrupt / "saved_model.pb").write_bytes(b"\x08\x01 not a protobuf")
    strict = work / "strict"
    _strict_copy(row["artifact_uri"].removeprefix("file://"), strict)
    return {"trained": row["artifact_uri"], "untrained": untrained.as_uri(), "corrupt": corrupt.as_uri(),
            "strict": strict.as_uri()}  # fmt: skip


def _strict_copy(source: str, target) -> None:
    """The trained model, refusing any flight without a plane: every replayed row has one (no labelled flight
    lacks its tail number), while live callers send flights whose plane is not assigned yet."""
    import tensorflow as tf

    loaded = tf.saved_model.load(source)
    signature = loaded.signatures["serving_default"]
    specs = {k: tf.TensorSpec(s.shape, s.dtype, name=k) for k, s in signature.structured_input_signature[1].items()}

    class Strict(tf.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[specs])
        def serve(self, inputs):
            tf.debugging.Assert(tf.reduce_all(tf.not_equal(inputs["tailnum"], "")), ["a flight without a plane"])
            return self.inner.signatures["serving_default"](**inputs)

    module = Strict(loaded)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve.get_concrete_function()})


@pytest.fixture
def new_version(trained, artifacts, db_url) -> Callable[..., int]:
    """Registers a blessed version, never deployed before, of one of the `artifacts`."""
    _, row, _ = trained
    return lambda kind="trained": register_copy(db_url, row, artifacts[kind], f"{kind}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def no_model_served(serving, db_url) -> Settings:
    """Serving as on a fresh install: no entry for the model in models.config, nothing of it in
    production or canary in the registry. Version folders stay on disk, unserved."""
    others = [e for e in read_models_config(serving.models_config) if e.name != serving.model_name]
    write_models_config(serving.models_config, others)
    with db.engine(db_url).connect() as conn:
        live = conn.execute(
            sa.select(model_versions.c.version).where(model_versions.c.status.in_(("production", "canary")))
        ).scalars().all()  # fmt: skip
    for version in live:
        set_status(db_url, version, "archived", dt.datetime.now(dt.UTC), "serving reset by a deploy test")

    def unserved() -> bool:
        with client_for(serving, retries=0) as client:
            try:
                client.status()
            except ServingError as err:
                return err.status == 404
        return False

    wait_for_server(unserved, f"{serving.model_name} unloaded")
    return serving


def _deploy_with_steps(settings: Settings, version: int, run_id: str) -> None:
    """push → infra validation → canary → promote, as the DAG runs them, without Airflow."""
    policy = DeployPolicy.from_env()
    planned = plan(settings, {"version": version, "action": "promote"}, [])
    pushed = push(settings, policy, planned, run_id)
    infra_validate(settings, policy, planned, pushed, run_id)
    canary(settings, policy, planned, pushed, run_id)
    promote(settings, policy, planned, run_id)


@pytest.fixture
def stable(no_model_served, new_version) -> int:
    """A fresh version deployed as `stable` on otherwise empty serving: loaded alone, no canary."""
    version = new_version()
    _deploy_with_steps(no_model_served, version, f"stable-fixture-{version}")
    assert read_state(no_model_served) == ServingState([version], {"stable": version})
    return version


def _deploy(dagbag, **conf):
    # Every param, every time: dag.test() keeps the previous run's conf on the (shared) DAG's params.
    run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": None, **conf})
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _history(db_url: str, version: int) -> list[tuple[str, bool, str]]:
    with db.engine(db_url).connect() as conn:
        rows = conn.execute(
            sa.select(deployments.c.action, deployments.c.succeeded, deployments.c.reason)
            .where(deployments.c.version == version).order_by(deployments.c.id)
        ).all()  # fmt: skip
    return [tuple(r) for r in rows]


def _stable_on_server(settings: Settings) -> int:
    with client_for(settings) as client:
        return int(client.status(label="stable")[0]["version"])


def test_first_deploy_validates_then_promotes(dagbag, no_model_served, new_version, db_url) -> None:
    serving = no_model_served
    a = new_version()
    run, states = _deploy(dagbag, version=a, action="promote")
    assert run.state == "success", states
    assert states["rollback"] == "skipped"
    state = read_state(serving)
    assert state.labels == {"stable": a}
    assert state.versions == [a]
    assert get_version(db_url, a)["status"] == "production"
    assert [(action, ok) for action, ok, _ in _history(db_url, a)] == [
        ("push", True), ("infra_validation", True), ("canary", True), ("promote", True)
    ]  # fmt: skip
    folder = serving.model_dir / str(a)
    assert (folder / "saved_model.pb").exists()
    assert (folder / WARMUP_FILE).stat().st_size > 0
    assert not [p for p in serving.model_dir.iterdir() if p.name.startswith(".staging")]
    validated = run.get_task_instance("infra_validate").xcom_pull(task_ids="infra_validate")
    assert validated["sandbox"]["available"]  # loaded and queried in its own server before production's
    assert validated["sandbox"]["requests"] == DeployPolicy().infra_requests
    assert validated["sandbox"]["max_abs_diff"] <= DeployPolicy().infra_tolerance
    assert validated["available"]
    assert validated["signature"]
    assert validated["requests"] == DeployPolicy().infra_requests
    assert validated["max_abs_diff"] <= DeployPolicy().infra_tolerance
    assert _stable_on_server(serving) == a
    with db.engine(db_url).connect() as conn:
        events = conn.execute(sa.text(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'model_serving' AND e.source_run_id = :r"), {"r": run.run_id}).scalars().all()  # fmt: skip
    assert [e["stable"] for e in events] == [a]


def test_pushing_again_never_overwrites_a_version(serving, new_version) -> None:
    a = new_version()
    planned = plan(serving, {"version": a, "action": "canary"}, [])
    assert push(serving, DeployPolicy(), planned, "first")["pushed"] is True
    pb = serving.model_dir / str(a) / "saved_model.pb"
    before = pb.stat().st_mtime_ns
    again = push(serving, DeployPolicy(), planned, "retry")
    assert again["pushed"] is False
    assert pb.stat().st_mtime_ns == before


def test_canary_action_serves_the_new_version_next_to_stable(dagbag, stable, new_version, serving, db_url) -> None:
    b = new_version()
    run, states = _deploy(dagbag, version=b, action="canary")
    assert run.state == "success", states
    assert states["promote"] == "skipped"
    assert read_state(serving).labels == {"stable": stable, "canary": b}
    assert get_version(db_url, b)["status"] == "canary"
    canary_step = [r for r in _history(db_url, b) if r[0] == "canary"][-1]
    assert canary_step[1]
    assert canary_step[2] == "canary healthy"


def test_promote_moves_stable_and_keeps_the_old_version_loaded(dagbag, stable, new_version, serving, db_url) -> None:
    b = new_version()
    run, states = _deploy(dagbag, version=b, action="promote")
    assert run.state == "success", states
    state = read_state(serving)
    assert state.labels == {"stable": b}
    assert stable in state.versions  # grace period: a rollback needs no load
    assert get_version(db_url, stable)["status"] == "archived"
    assert get_version(db_url, b)["status"] == "production"
    with db.engine(db_url).connect() as conn:
        verdict = conn.execute(
            sa.select(deployments.c.detail).where(deployments.c.version == b, deployments.c.action == "canary")
        ).scalar_one()  # fmt: skip
    assert verdict["requests"] == DeployPolicy().canary_requests  # the canary was judged, on the numbers kept
    assert verdict["problems"] == []
    assert 0 < verdict["canary_p50_ms"] <= verdict["canary_p90_ms"] <= verdict["p90_limit_ms"]
    # The version's model card now records who promoted it and when (include/train/model_card.py).
    card = (lake.lake_root(serving) / "reports" / "model_card" / str(b) / "model_card.md").read_text()
    promotions = card.partition("## Promotions")[2]
    assert f"(nightshift_deploy / {run.run_id}): stable {stable} → {b}" in promotions
    assert "Not promoted" not in promotions


def test_rollback_returns_stable_to_the_previous_version(dagbag, stable, new_version, serving, db_url,
                                                         alert_receivers) -> None:  # fmt: skip
    a, b = stable, new_version()
    _deploy_with_steps(serving, b, "rollback-test-promote")
    assert read_state(serving).labels == {"stable": b}
    run, states = _deploy(dagbag, action="rollback")
    assert run.state == "success", states
    assert states["push"] == "skipped"
    assert read_state(serving).labels == {"stable": a}
    assert _stable_on_server(serving) == a
    assert get_version(db_url, a)["status"] == "production"
    assert get_version(db_url, b)["status"] == "rolled_back"
    assert _history(db_url, a)[-1] == ("rollback", True, f"stable {b} → {a}")
    with db.engine(db_url).connect() as conn:
        alerted = conn.execute(
            sa.select(alerts).where(alerts.c.kind == "rollback", alerts.c.run_id == run.run_id)
        ).mappings().all()  # fmt: skip
    assert len(alerted) == 1
    assert alerted[0]["severity"] == "warning"
    assert alerted[0]["deliveries"]["webhook"].startswith("posted to")
    assert sum(alerted[0]["title"] in m["subject"] for m in alert_receivers["mails"]) == 1


def test_a_corrupt_saved_model_never_gets_a_label(dagbag, stable, new_version, serving, db_url) -> None:
    bad = new_version("corrupt")
    before = read_state(serving)
    run, states = _deploy(dagbag, version=bad, action="promote")
    assert run.state == "failed"
    assert states["push"] == "failed"
    assert states["infra_validate"] == "upstream_failed"
    assert read_state(serving) == before
    assert not (serving.model_dir / str(bad)).exists()
    row = get_version(db_url, bad)
    assert row["status"] == "rejected"
    assert "push failed: SavedModel does not load" in row["gate_note"]


def test_an_unhealthy_canary_is_rolled_back_and_stable_keeps_serving(dagbag, stable, new_version, serving,
                                                                      db_url) -> None:  # fmt: skip
    untrained = new_version("untrained")
    before = read_state(serving)
    os.environ["NIGHTSHIFT_DEPLOY_MAX_PREDICTION_SHIFT"] = "0.001"
    try:
        run, states = _deploy(dagbag, version=untrained, action="promote")
    finally:
        os.environ.pop("NIGHTSHIFT_DEPLOY_MAX_PREDICTION_SHIFT")
    assert run.state == "failed"
    assert (states["infra_validate"], states["canary"], states["promote"]) == ("success", "failed", "upstream_failed")
    assert read_state(serving).labels == before.labels == {"stable": stable}
    assert _stable_on_server(serving) == stable
    assert get_version(db_url, untrained)["status"] == "rolled_back"
    action, ok, reason = _history(db_url, untrained)[-1]
    assert (action, ok) == ("canary", False)
    assert "mean prediction shift" in reason


def test_serving_down_fails_the_deploy_and_leaves_stable_untouched(serving, new_version, db_url, refused_url) -> None:
    spare = new_version()
    planned = plan(serving, {"version": spare, "action": "promote"}, [])
    pushed = push(serving, DeployPolicy(), planned, "down-test")
    before = read_state(serving)
    down = dataclasses.replace(serving, serving_url=refused_url)
    with pytest.raises(Exception, match="unreachable"):
        infra_validate(down, DeployPolicy(load_timeout_s=5), planned, pushed, "down-test")
    assert read_state(serving) == before
    assert get_version(db_url, spare)["status"] == "blessed"  # the server's fault, not the model's
    assert _history(db_url, spare)[-1][:2] == ("infra_validation", False)


def test_racing_deploys_cannot_both_move_labels(serving, new_version) -> None:
    spare = new_version()
    planned = plan(serving, {"version": spare, "action": "promote"}, [])
    held, release = threading.Event(), threading.Event()

    def other_deploy() -> None:
        with serving_lock(serving, timeout_s=5):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_deploy)
    thread.start()
    assert held.wait(5)
    try:
        with pytest.raises(DeployConflict, match="held the serving lock"):
            promote(serving, DeployPolicy(lock_timeout_s=1), planned, "race")
    finally:
        release.set()
        thread.join()
    pushed = push(serving, DeployPolicy(), planned, "race")
    stale = {**planned, "labels": {"stable": -1}}
    with pytest.raises(DeployConflict, match="labels changed"):
        infra_validate(serving, DeployPolicy(), stale, pushed, "race")


def test_retire_unloads_unlabelled_versions_after_the_grace_period(stable, new_version, serving) -> None:
    idle = new_version()
    planned = plan(serving, {"version": idle, "action": "canary"}, [])
    infra_validate(serving, DeployPolicy(), planned, push(serving, DeployPolicy(), planned, "retire-test"),
                   "retire-test")  # fmt: skip
    state = read_state(serving)
    assert state == ServingState(sorted([stable, idle]), {"stable": stable})  # loaded, unlabelled
    assert retire(serving, DeployPolicy(grace_hours=24), "retire-test") == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    assert retire(serving, DeployPolicy(grace_hours=24), "retire-test", at=later) == [idle]
    assert read_state(serving) == ServingState([stable], {"stable": stable})


def test_an_unknown_or_rejected_version_is_refused(serving, new_version, db_url) -> None:
    rejected = new_version()
    set_status(db_url, rejected, "rejected", dt.datetime.now(dt.UTC), "rejected by a test")
    with pytest.raises(DeployError, match="not in the registry"):
        plan(serving, {"version": 999_999, "action": "promote"}, [])
    with pytest.raises(DeployError, match=f"model version {rejected} is rejected"):
        plan(serving, {"version": rejected, "action": "promote"}, [])


def test_the_monitor_scores_with_the_version_it_records_while_stable_moves(stable, new_version, serving, trained,
                                                                           monkeypatch) -> None:  # fmt: skip
    """A promotion between reading stable's number and scoring must not log another model's predictions under it."""
    import numpy as np

    from include.contract.inputs import serving_columns
    from include.core import lake
    from include.core.config import MonitorPolicy
    from include.monitor import steps as monitor
    from include.serving.client import ServingClient
    from include.serving.state import write_state

    other = new_version("untrained")
    push(serving, DeployPolicy.from_env(), plan(serving, {"version": other, "action": "canary"}, []), "race-push")
    loaded = ServingState([stable, other], {"stable": stable})
    write_state(serving, loaded)
    ask = ServingClient.status

    def available() -> bool:
        with client_for(serving, retries=0) as client:
            try:
                return ask(client, version=other)[0]["state"] == "AVAILABLE"
            except ServingError as err:  # not loaded yet: the server answers from the state it has
                return err.status == 404 and False

    wait_for_server(available, f"version {other} loaded")
    promoted = dataclasses.replace(loaded, labels={"stable": other})

    def status_then_promote(self, version=None, label=None):
        answer = ask(self, version=version, label=label)
        if label == "stable" and read_state(serving) != promoted:  # on-call promotes right after the monitor asked
            write_state(serving, promoted)
            wait_for_server(lambda: ask(self, label="stable")[0]["version"] == str(other), f"stable -> {other}")
        return answer

    day = dt.date.fromisoformat(trained[1]["data_window"]["end"])
    monkeypatch.setattr(ServingClient, "status", status_then_promote)
    try:
        scored = monitor.score_day(serving, MonitorPolicy.from_env(), day, "version-race")
        monkeypatch.undo()
        assert read_state(serving).labels == {"stable": other}  # the promotion did land mid-scoring
        logged = lake.read_parquet(monitor.predictions_file(serving, day)).head(64)
        with client_for(serving) as client:
            by_stable = np.ravel(client.predict_columns(serving_columns(logged), version=stable))
            by_other = np.ravel(client.predict_columns(serving_columns(logged), version=other))
    finally:
        monkeypatch.undo()
        write_state(serving, ServingState([stable], {"stable": stable}))
    assert scored["model_version"] == stable
    assert set(logged["model_version"]) == {stable}
    assert np.max(np.abs(by_stable - by_other)) > 1e-3  # the two models really disagree on these flights
    np.testing.assert_allclose(logged["prediction"], by_stable, atol=1e-6)


def test_a_canary_failing_on_live_traffic_is_rolled_back_with_one_alert(dagbag, stable, new_version, serving,
                                                                       db_url, predict_service) -> None:  # fmt: skip
    """The strict model passes infra validation and would pass the replayed canary (real rows all have a plane),
    but fails the prediction service's callers who send flights with no plane yet. Judged on that live traffic
    after its bake, it is rolled back by itself: stable never stops answering, and on-call gets one alert."""
    import httpx

    from include.predict import keys
    from include.predict.parity import callers_flights
    from tests.server_fixtures import END

    strict = new_version("strict")
    flights = list(callers_flights(serving, END).values())[:400]
    flights = [{**f, "tailnum": None} if i % 3 == 0 else f for i, f in enumerate(flights)]
    key = keys.create_key(db_url, f"live-canary-{uuid.uuid4().hex[:8]}", 1_000_000)
    stop, answered = threading.Event(), []

    def callers() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            while not stop.is_set():
                for i in range(0, len(flights), 40):
                    answered.append(http.post(f"{predict_service.url}/v1/predict",
                                              json={"flights": flights[i : i + 40]}).status_code)  # fmt: skip

    traffic = threading.Thread(target=callers, daemon=True)
    traffic.start()
    settings = {"NIGHTSHIFT_DEPLOY_CANARY_BAKE_S": "6", "NIGHTSHIFT_DEPLOY_CANARY_MIN_LIVE": "50",
                "NIGHTSHIFT_DEPLOY_CANARY_PERCENT": "30"}  # fmt: skip
    os.environ.update(settings)
    try:
        run, states = _deploy(dagbag, version=strict, action="promote")
    finally:
        for name in settings:
            os.environ.pop(name)
        stop.set()
        traffic.join(timeout=60)
    assert run.state == "failed"
    assert (states["infra_validate"], states["canary"], states["promote"]) == ("success", "failed", "upstream_failed")
    assert read_state(serving).labels == {"stable": stable}
    assert get_version(db_url, strict)["status"] == "rolled_back"
    with db.engine(db_url).connect() as conn:
        verdict = conn.execute(sa.select(deployments.c.reason, deployments.c.detail).where(
            deployments.c.version == strict, deployments.c.action == "canary")).one()  # fmt: skip
        raised = conn.execute(sa.select(alerts.c.kind, alerts.c.title).where(alerts.c.run_id == run.run_id)).all()
    assert verdict.detail["judged_on"] == "live"
    assert verdict.detail["canary_error_rate"] > 0.1
    assert "error rate" in verdict.reason
    assert len(raised) == 1, raised
    assert set(answered) == {200}  # callers were answered throughout: stable took the canary's failed flights
