"""Attacks on deploy authority: serving a version the registry does not allow, or bytes the gate never blessed.

Each attack triggers the real `nightshift_deploy` (dag.test) against the local serving process that
already serves the trained model as `stable`, and checks that serving is exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from include import db
from include.core.config import DeployPolicy
from include.db import deployments
from include.deploy.errors import StatusRefused
from include.deploy.steps import plan, push
from include.serving.client import client_for
from include.serving.state import read_state
from include.train.registry import get_version, set_status
from tests.factories import register_copy


def _deploy(dagbag, **conf):
    run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": None, **conf})
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _rows(db_url: str, version: int) -> list[tuple[str, bool, str]]:
    with db.engine(db_url).connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(deployments.c.action, deployments.c.succeeded, deployments.c.reason)
            .where(deployments.c.version == version).order_by(deployments.c.id)
        )]  # fmt: skip


def _stable_answers(serving) -> int:
    with client_for(serving) as client:
        assert client.predict_rows(_some_rows(serving), label="stable")
        return int(client.status(label="stable")[0]["version"])


def _some_rows(serving) -> list[dict]:
    from include.deploy.savedmodel import sample_rows

    stable = get_version(serving.require_database_url(), read_state(serving).stable)
    return sample_rows(serving, stable["dataset_uri"], 4)


def _pushed_version(serving, trained, db_url, status: str) -> int:
    """A copy of the trained model, pushed into serving (its folder exists, as the attack needs), then `status`."""
    _, row, _ = trained
    version = register_copy(db_url, row, row["artifact_uri"], f"authority-{status}-{uuid.uuid4().hex[:8]}")
    push(serving, DeployPolicy(), plan(serving, {"version": version, "action": "canary"}, []), f"attack-{version}")
    at = dt.datetime.now(dt.UTC)
    for step in {"blessed": [], "rejected": ["rejected"], "rolled_back": ["canary", "rolled_back"]}[status]:
        set_status(db_url, version, step, at, f"made {status} by an attack test")
    assert (serving.model_dir / str(version) / "saved_model.pb").exists()
    return version


@pytest.mark.parametrize(
    ("action", "status"),
    [("promote", "rejected"), ("rollback", "rejected"), ("rollback", "rolled_back"), ("rollback", "blessed")],
)
def test_deploy_refuses_a_version_the_registry_does_not_allow(dagbag, serving, stable_model, trained, db_url,
                                                              action: str, status: str) -> None:  # fmt: skip
    """On-call (or anyone who can trigger the DAG) names a rejected, rolled-back or never-served version."""
    version = _pushed_version(serving, trained, db_url, status)
    before = read_state(serving)
    run, states = _deploy(dagbag, version=version, action=action)
    assert read_state(serving) == before  # no label moved, nothing loaded or unloaded
    assert _stable_answers(serving) == before.stable == stable_model
    assert not [r for r in _rows(db_url, version) if r[0] != "push"], "no deployments row beyond the test's push"
    assert get_version(db_url, version)["status"] == status
    assert run.state == "failed"
    assert states["plan"] == "failed", states
    assert all(states[t] in ("upstream_failed", "skipped", "None") for t in ("push", "rollback", "promote")), states
    with pytest.raises(StatusRefused, match=f"{action} of .* version {version} refused: model version {version} is "
                       f"{status} .* cannot become"):  # fmt: skip
        plan(serving, {"version": version, "action": action}, [])  # the message the failed plan task logged


def _tamper_flip(folder: Path) -> None:
    data = folder / "variables" / "variables.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))


def _tamper_swap(folder: Path, other: Path) -> None:
    """The registered folder now holds another real, loadable model of the same signature."""
    shutil.rmtree(folder)
    shutil.copytree(other, folder)


@pytest.fixture(scope="module")
def other_model(trained, tmp_path_factory) -> Path:
    from include.trainer.io import read_split
    from include.trainer.model import FeatureStats, build_model

    out = tmp_path_factory.mktemp("other") / "untrained"
    stats = FeatureStats.from_frame(read_split(trained[1]["dataset_uri"], "train").head(2000))
    hp = {"units": 8, "layers": 1, "dropout": 0.0, "embedding_dim": 4, "learning_rate": 1e-3}
    build_model(stats, hp).export(str(out), format="tf_saved_model", verbose=False)
    return out


@pytest.mark.parametrize("tamper", ["flip_a_variables_byte", "swap_in_other_weights"])
def test_push_refuses_files_that_are_not_what_the_gate_blessed(dagbag, serving, stable_model, trained, db_url,
                                                               tmp_path, other_model, tamper: str) -> None:  # fmt: skip
    """Someone with write access to the lake changes a registered model's files after the gate blessed it."""
    _, row, _ = trained
    folder = tmp_path / "export"
    shutil.copytree(row["artifact_uri"].removeprefix("file://"), folder)
    version = register_copy(db_url, row, folder.as_uri(), f"tamper-{tamper}-{uuid.uuid4().hex[:8]}")
    if tamper == "flip_a_variables_byte":
        _tamper_flip(folder)
    else:
        _tamper_swap(folder, other_model)
    before = read_state(serving)
    run, states = _deploy(dagbag, version=version, action="promote")
    assert run.state == "failed"
    assert states["push"] == "failed", states
    assert states["infra_validate"] == "upstream_failed", states
    assert not (serving.model_dir / str(version)).exists()  # nothing copied into serving
    assert not [p for p in serving.model_dir.iterdir() if p.name.startswith(".staging")]
    assert read_state(serving) == before
    assert _stable_answers(serving) == stable_model
    action, ok, reason = _rows(db_url, version)[-1]
    assert (action, ok) == ("push", False)
    assert "are not the ones the gate blessed" in reason
    assert get_version(db_url, version)["status"] == "blessed"  # the files are wrong, not the model
