"""Deploy steps converge: a retry after a failure at any point leaves the serving labels, the registry's
statuses and the `deployments` rows agreeing, and a failed canary leaves no live canary label.

Postgres failing is injected for real: the registry's `set_status` raises SQLAlchemy's OperationalError
(what a dropped connection raises) right after a step moved its label, and Airflow's own retry of the
task (dag.test runs retries, after the DAG's retry delay) has to finish the job.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from include import db
from include.core.config import DeployPolicy, Settings
from include.db import deployments
from include.deploy import steps
from include.serving.state import ServingState, read_state, rollback_target, write_state
from include.train import registry
from tests.factories import register_copy
from tests.server_fixtures import only_stable, served_label

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clients_closed", "serving_restored")]
REAL_SET_STATUS = registry.set_status


def _fail_once(monkeypatch, status: str, times: int = 1) -> list[int]:
    """`registry.set_status(…, status)` raises OperationalError the first `times` calls; returns the versions hit."""
    real, hit = REAL_SET_STATUS, []

    def flaky(url: str, version: int, to: str, at: dt.datetime, note: str | None = None) -> None:
        if to == status and len(hit) < times:
            hit.append(version)
            raise sa.exc.OperationalError("UPDATE model_versions", {}, Exception("server closed the connection"))
        real(url, version, to, at, note)

    monkeypatch.setattr(registry, "set_status", flaky)
    return hit


@pytest.fixture
def new_version(trained, db_url) -> Callable[[], int]:
    """A blessed copy of the trained model (so its canary is healthy), never deployed before."""
    _, row, _ = trained
    return lambda: register_copy(db_url, row, row["artifact_uri"], f"converge-{uuid.uuid4().hex[:8]}")


def _served(settings: Settings, label: str) -> int | None:
    return served_label(settings.serving_url, settings.model_name, label)


@pytest.fixture
def stable_only(stable_model, serving, db_url) -> int:
    return only_stable(serving, db_url)


def _deploy(dagbag, **conf):
    # Every param, every time: dag.test() keeps the previous run's conf on the (shared) DAG's params.
    run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": None, **conf})
    return run, {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances()}


def _rows(db_url: str, run_id: str, action: str) -> list[dict]:
    with db.engine(db_url).connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(deployments).where(deployments.c.run_id == run_id, deployments.c.action == action,
                                         deployments.c.succeeded).order_by(deployments.c.id)).mappings()]  # fmt: skip


def _status(db_url: str, version: int) -> str:
    return registry.get_version(db_url, version)["status"]


def test_promote_retried_after_postgres_failed_past_the_label_converges(dagbag, stable_only, new_version, serving,
                                                                         db_url, monkeypatch) -> None:  # fmt: skip
    a, b = stable_only, new_version()
    hit = _fail_once(monkeypatch, "production")
    run, states = _deploy(dagbag, version=b, action="promote")
    assert hit == [b]  # the fault did land: after `stable` moved, before the registry knew
    assert states["promote"] == ("success", 2), states  # failed once, converged on Airflow's retry
    assert run.state == "success", states
    assert read_state(serving).labels == {"stable": b}
    assert _served(serving, "stable") == b
    assert (_status(db_url, b), _status(db_url, a)) == ("production", "archived")
    promoted = _rows(db_url, run.run_id, "promote")
    assert [(r["version"], r["stable_version"], r["previous_stable_version"]) for r in promoted] == [(b, b, a)]
    assert len(_rows(db_url, run.run_id, "canary")) == 1
    assert rollback_target(db_url, serving.model_name, b) == a  # one-click rollback finds the version replaced


def test_canary_retried_after_the_registry_write_failed_removes_its_label_and_converges(
    dagbag, stable_only, new_version, serving, db_url, monkeypatch
) -> None:
    a, c = stable_only, new_version()
    hit = _fail_once(monkeypatch, "canary")
    run, states = _deploy(dagbag, version=c, action="canary")
    assert hit == [c]
    assert states["canary"] == ("success", 2), states
    assert run.state == "success", states
    assert read_state(serving).labels == {"stable": a, "canary": c}
    assert _served(serving, "canary") == c
    assert (_status(db_url, c), _status(db_url, a)) == ("canary", "production")
    rows = _rows(db_url, run.run_id, "canary")
    assert [(r["version"], r["stable_version"], r["canary_version"]) for r in rows] == [(c, a, c)]


def test_a_canary_that_cannot_record_its_verdict_leaves_no_canary_label(stable_only, new_version, serving, db_url,
                                                                       monkeypatch) -> None:  # fmt: skip
    """The try fails with Postgres gone after the label moved; then a try that died outright (SIGKILL) left
    the label behind: the next try of the same run takes it away and converges."""
    a, c = stable_only, new_version()
    policy, run_id = DeployPolicy.from_env(), f"converge-canary-{c}"
    planned = steps.plan(serving, {"version": c, "action": "canary"}, [])
    pushed = steps.push(serving, policy, planned, run_id)
    steps.infra_validate(serving, policy, planned, pushed, run_id)
    before = read_state(serving)
    _fail_once(monkeypatch, "canary", times=99)
    with pytest.raises(sa.exc.OperationalError):
        steps.canary(serving, policy, planned, pushed, run_id)
    assert read_state(serving) == before  # no live canary label without a recorded verdict
    assert _status(db_url, c) == "blessed"
    monkeypatch.setattr(registry, "set_status", REAL_SET_STATUS)  # Postgres is back
    write_state(serving, ServingState(before.versions, {**before.labels, "canary": c}))  # a killed try's leftover
    tried = steps.canary(serving, policy, planned, pushed, run_id)
    assert tried["labels"] == {"stable": a, "canary": c}
    assert steps.canary(serving, policy, planned, pushed, run_id)["labels"] == tried["labels"]  # a third try: no-op
    assert read_state(serving).labels == {"stable": a, "canary": c}
    assert _status(db_url, c) == "canary"
    assert len(_rows(db_url, run_id, "canary")) == 1


def test_rollback_retried_after_postgres_failed_past_the_label_converges(dagbag, stable_only, new_version, serving,
                                                                         db_url, monkeypatch) -> None:  # fmt: skip
    a, b = stable_only, new_version()
    policy, run_id = DeployPolicy.from_env(), f"converge-promote-{b}"
    planned = steps.plan(serving, {"version": b, "action": "promote"}, [])
    pushed = steps.push(serving, policy, planned, run_id)
    steps.infra_validate(serving, policy, planned, pushed, run_id)
    steps.canary(serving, policy, planned, pushed, run_id)
    steps.promote(serving, policy, planned, run_id)
    assert read_state(serving).labels == {"stable": b}
    hit = _fail_once(monkeypatch, "rolled_back")
    run, states = _deploy(dagbag, action="rollback")
    assert hit == [b]  # `stable` was back on a, the registry still said b is production
    assert states["rollback"] == ("success", 2), states
    assert run.state == "success", states
    assert read_state(serving).labels == {"stable": a}
    assert _served(serving, "stable") == a
    assert (_status(db_url, a), _status(db_url, b)) == ("production", "rolled_back")
    rows = _rows(db_url, run.run_id, "rollback")
    assert [(r["version"], r["stable_version"], r["previous_stable_version"]) for r in rows] == [(a, a, b)]
