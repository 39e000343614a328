"""The deploy DAG against the local TF-Serving-compatible server, started as `make demo` starts it.

Versions are registered from the model the `trained` fixture made (an identical copy, so its
canary is healthy), from an untrained model of the same signature (a canary that shifts
predictions), and from a SavedModel with a corrupt `saved_model.pb`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import threading

import pytest
import sqlalchemy as sa

from include import db
from include.core.config import DeployPolicy
from include.db import alerts, deployments
from include.deploy.steps import (
    DeployConflict,
    DeployError,
    infra_validate,
    plan,
    promote,
    push,
    retire,
    serving_lock,
)
from include.serving.client import client_for
from include.serving.config import WARMUP_FILE
from include.serving.process import free_port
from include.serving.state import read_state
from include.train.registry import get_version
from tests.factories import register_copy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def versions(trained, db_url, tmp_path_factory) -> dict[str, int]:
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
    return {
        "a": register_copy(db_url, row, row["artifact_uri"], "a"),
        "b": register_copy(db_url, row, row["artifact_uri"], "b"),
        "untrained": register_copy(db_url, row, untrained.as_uri(), "untrained"),
        "corrupt": register_copy(db_url, row, corrupt.as_uri(), "corrupt"),
        "spare": register_copy(db_url, row, row["artifact_uri"], "spare"),
    }


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


def test_first_deploy_validates_then_promotes(dagbag, serving, versions, db_url) -> None:
    a = versions["a"]
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
    assert validated["available"]
    assert validated["signature"]
    assert validated["requests"] == DeployPolicy().infra_requests
    assert validated["max_abs_diff"] <= DeployPolicy().infra_tolerance
    client = client_for(serving)
    assert int(client.status(label="stable")[0]["version"]) == a
    with db.engine(db_url).connect() as conn:
        events = conn.execute(sa.text(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'model_serving' AND e.source_run_id = :r"), {"r": run.run_id}).scalars().all()  # fmt: skip
    assert [e["stable"] for e in events] == [a]


def test_pushing_again_never_overwrites_a_version(serving, versions, db_url) -> None:
    a = versions["a"]
    pb = serving.model_dir / str(a) / "saved_model.pb"
    before = pb.stat().st_mtime_ns
    again = push(serving, DeployPolicy(), plan(serving, {"version": a, "action": "canary"}, []), "retry")
    assert again["pushed"] is False
    assert pb.stat().st_mtime_ns == before


def test_canary_action_serves_the_new_version_next_to_stable(dagbag, serving, versions, db_url) -> None:
    a, b = versions["a"], versions["b"]
    run, states = _deploy(dagbag, version=b, action="canary")
    assert run.state == "success", states
    assert states["promote"] == "skipped"
    assert read_state(serving).labels == {"stable": a, "canary": b}
    assert get_version(db_url, b)["status"] == "canary"
    canary = [r for r in _history(db_url, b) if r[0] == "canary"][-1]
    assert canary[1]
    assert canary[2] == "canary healthy"


def test_promote_moves_stable_and_keeps_the_old_version_loaded(dagbag, serving, versions, db_url) -> None:
    a, b = versions["a"], versions["b"]
    run, states = _deploy(dagbag, version=b, action="promote")
    assert run.state == "success", states
    state = read_state(serving)
    assert state.labels == {"stable": b}
    assert a in state.versions  # grace period: a rollback needs no load
    assert get_version(db_url, a)["status"] == "archived"
    assert get_version(db_url, b)["status"] == "production"


def test_rollback_returns_stable_to_the_previous_version(dagbag, serving, versions, db_url, alert_receivers) -> None:
    a, b = versions["a"], versions["b"]
    run, states = _deploy(dagbag, action="rollback")
    assert run.state == "success", states
    assert states["push"] == "skipped"
    assert read_state(serving).labels == {"stable": a}
    assert int(client_for(serving).status(label="stable")[0]["version"]) == a
    assert get_version(db_url, a)["status"] == "production"
    assert get_version(db_url, b)["status"] == "rolled_back"
    assert _history(db_url, a)[-1] == ("rollback", True, f"stable {b} → {a}")
    with db.engine(db_url).connect() as conn:
        alerted = conn.execute(sa.select(alerts).where(alerts.c.kind == "rollback")).mappings().all()
    assert len(alerted) == 1
    assert alerted[0]["severity"] == "warning"
    assert alerted[0]["deliveries"]["webhook"].startswith("posted to")
    assert sum(alerted[0]["title"] in m["subject"] for m in alert_receivers["mails"]) == 1


def test_a_corrupt_saved_model_never_gets_a_label(dagbag, serving, versions, db_url) -> None:
    bad = versions["corrupt"]
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


def test_an_unhealthy_canary_is_rolled_back_and_stable_keeps_serving(dagbag, serving, versions, db_url) -> None:
    untrained = versions["untrained"]
    before = read_state(serving)
    os.environ["NIGHTSHIFT_DEPLOY_MAX_PREDICTION_SHIFT"] = "0.001"
    try:
        run, states = _deploy(dagbag, version=untrained, action="promote")
    finally:
        os.environ.pop("NIGHTSHIFT_DEPLOY_MAX_PREDICTION_SHIFT")
    assert run.state == "failed"
    assert (states["infra_validate"], states["canary"], states["promote"]) == ("success", "failed", "upstream_failed")
    assert read_state(serving).labels == before.labels
    assert get_version(db_url, untrained)["status"] == "rolled_back"
    action, ok, reason = _history(db_url, untrained)[-1]
    assert (action, ok) == ("canary", False)
    assert "mean prediction shift" in reason


def test_serving_down_fails_the_deploy_and_leaves_stable_untouched(serving, versions, db_url) -> None:
    spare = versions["spare"]
    planned = plan(serving, {"version": spare, "action": "promote"}, [])
    pushed = push(serving, DeployPolicy(), planned, "down-test")
    before = read_state(serving)
    down = dataclasses.replace(serving, serving_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Exception, match="unreachable"):
        infra_validate(down, DeployPolicy(load_timeout_s=5), planned, pushed, "down-test")
    assert read_state(serving) == before
    assert get_version(db_url, spare)["status"] == "blessed"  # the server's fault, not the model's
    assert _history(db_url, spare)[-1][:2] == ("infra_validation", False)


def test_racing_deploys_cannot_both_move_labels(serving, versions) -> None:
    spare = versions["spare"]
    planned = plan(serving, {"version": spare, "action": "promote"}, [])
    held, release = threading.Event(), threading.Event()

    def other_deploy() -> None:
        with serving_lock(serving, timeout_s=5):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_deploy)
    thread.start()
    held.wait(5)
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


def test_retire_unloads_unlabelled_versions_after_the_grace_period(serving, versions, db_url) -> None:
    state = read_state(serving)
    idle = [v for v in state.versions if v not in state.labels.values()]
    assert idle
    assert retire(serving, DeployPolicy(grace_hours=24), "retire-test") == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    assert retire(serving, DeployPolicy(grace_hours=24), "retire-test", at=later) == sorted(idle)
    after = read_state(serving)
    assert after.labels == state.labels
    assert after.versions == sorted(state.labels.values())


def test_an_unknown_or_rejected_version_is_refused(serving, versions) -> None:
    with pytest.raises(DeployError, match="not in the registry"):
        plan(serving, {"version": 9999, "action": "promote"}, [])
    with pytest.raises(DeployError, match="rejected"):
        plan(serving, {"version": versions["corrupt"], "action": "promote"}, [])
