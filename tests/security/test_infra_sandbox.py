"""Attack on infra validation: a blessed-looking SavedModel that crashes or hangs whatever serves it.

The models are real SavedModels with the serving signature, built here from scratch: one whose
serving function runs TensorFlow's `Abort` op (the process dies with SIGABRT), one whose serving
function loops forever. Both load cleanly; they fail on their first predict, which the server runs
when it loads them (the warmup records push writes). The deploy must reject them in its sandbox,
while production's server, which never loads them, keeps answering for `stable` throughout.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from include import db
from include.db import alerts, deployments
from include.serving.client import ServingError, client_for
from include.serving.state import read_state
from include.train.registry import get_version
from tests.factories import register_copy


def build_bad_model(kind: str, out: Path) -> Path:
    """A SavedModel with the flight-delay serving signature whose serving function aborts or never returns."""
    import tensorflow as tf

    from include.contract.features import MODEL_FEATURES, SCHEDULE_CATEGORICAL

    specs = {f: tf.TensorSpec([None], tf.string if f in SCHEDULE_CATEGORICAL else tf.float32, name=f)
             for f in MODEL_FEATURES}  # fmt: skip

    class Bad(tf.Module):
        @tf.function(input_signature=[specs])
        def serve(self, inputs):
            x = inputs["distance"]
            if kind == "crash":
                abort = tf.raw_ops.Abort(error_msg="attack model: abort the serving process on predict")
                with tf.control_dependencies([abort]):
                    return {"p_delayed": tf.identity(tf.zeros_like(x))}
            spun = tf.while_loop(lambda i: i >= 0.0, lambda i: i + 1.0, [tf.constant(0.0)])  # never ends
            return {"p_delayed": tf.zeros_like(x) + spun}

    module = Bad()
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve.get_concrete_function()})
    return out


class ProductionProbe(threading.Thread):
    """Asks production's server for `stable` predictions every 0.25 s, and records whether the candidate
    ever appeared in production's models.config."""

    def __init__(self, settings, rows, candidate: int) -> None:
        super().__init__(daemon=True)
        self.settings, self.rows, self.candidate = settings, rows, candidate
        self.answered, self.errors, self.candidate_loaded = 0, [], False
        self.done = threading.Event()

    def run(self) -> None:
        with client_for(self.settings, retries=0) as client:
            while not self.done.is_set():
                try:
                    assert len(client.predict_rows(self.rows, label="stable")) == len(self.rows)
                    self.answered += 1
                except (ServingError, AssertionError) as err:
                    self.errors.append(str(err))
                self.candidate_loaded |= self.candidate in read_state(self.settings).versions
                time.sleep(0.25)


@pytest.mark.parametrize(("kind", "reason"), [
    ("crash", "took the sandbox server down (killed by SIGABRT)"),
    ("hang", "hung"),
])  # fmt: skip
def test_a_model_that_crashes_or_hangs_is_rejected_in_the_sandbox(
    dagbag, serving, stable_model, trained, db_url, tmp_path, kind: str, reason: str
) -> None:
    from include.deploy.savedmodel import sample_rows

    _, row, _ = trained
    bad = build_bad_model(kind, tmp_path / kind)
    version = register_copy(db_url, row, bad.as_uri(), f"sandbox-{kind}-{uuid.uuid4().hex[:8]}")
    before = read_state(serving)
    probe = ProductionProbe(serving, sample_rows(serving, row["dataset_uri"], 4), version)
    os.environ["NIGHTSHIFT_DEPLOY_SANDBOX_TIMEOUT_S"] = "60"  # the hang is cut off here
    probe.start()
    started = time.monotonic()
    try:
        run = dagbag.get_dag("nightshift_deploy").test(run_conf={"version": version, "action": "promote"})
    finally:
        elapsed = time.monotonic() - started
        os.environ.pop("NIGHTSHIFT_DEPLOY_SANDBOX_TIMEOUT_S")
        probe.done.set()
        probe.join(10)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert (states["push"], states["infra_validate"], states["canary"]) == ("success", "failed", "upstream_failed")
    assert probe.errors == [], probe.errors[:3]  # production answered for stable throughout
    assert probe.answered >= 5
    assert not probe.candidate_loaded  # production's server never loaded it
    assert read_state(serving) == before
    with client_for(serving) as client:
        assert int(client.status(label="stable")[0]["version"]) == stable_model
    assert get_version(db_url, version)["status"] == "rejected"
    with db.engine(db_url).connect() as conn:
        recorded = conn.execute(
            sa.select(deployments.c.action, deployments.c.succeeded, deployments.c.reason, deployments.c.detail)
            .where(deployments.c.version == version).order_by(deployments.c.id)
        ).all()  # fmt: skip
        alerted = conn.execute(
            sa.select(alerts.c.kind, alerts.c.task_id).where(alerts.c.run_id == run.run_id)
        ).all()  # fmt: skip
    action, ok, why, detail = recorded[-1]
    assert (action, ok) == ("infra_validation", False)
    assert "infra validation sandbox" in why
    assert reason in why
    assert "sandbox_log" in detail
    assert ("deploy_failed", "infra_validate") in [tuple(a) for a in alerted]
    print(f"{kind}: rejected in {elapsed:.0f} s; production answered {probe.answered} times, 0 errors; reason: {why}")
