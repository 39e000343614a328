"""Serving as replicas: two local server processes over one serving directory (one `models.config`, one
base path), one of them slow to load. A deploy is done only when every replica has the version and its
labels, and a replica stopped mid-deploy leaves serving as it was, until a retry finishes the job.

The slow replica is the real local server with its loader slowed down (a bigger model, a busier node),
started as its own process on its own port, exactly as `make airflow` starts each replica.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from include import db
from include.core.config import DeployPolicy, Settings
from include.deploy import steps
from include.deploy.errors import DeployError
from include.serving.process import is_up
from include.serving.state import read_state
from include.train import registry
from tests.factories import register_copy
from tests.server_fixtures import only_stable, served_label, wait_for_server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clients_closed", "serving_restored")]
LOAD_DELAY_S = 6.0
# The real local server, with its loader slowed down; it marks each version it finished loading in the
# folder given as its first argument, so the test can tell without a request (a status request to the
# local server would itself start the load).
SLOW_LOADER = f"""
import sys, time
from pathlib import Path
from include.serving import local_server
marks, real = Path(sys.argv[1]), local_server.load_version
def slow(version, path, stamp):
    time.sleep({LOAD_DELAY_S})
    loaded = real(version, path, stamp)
    (marks / f"loaded-{{version}}").touch()
    return loaded
local_server.load_version = slow
local_server.main(sys.argv[2:])
"""


@dataclasses.dataclass
class SlowReplica:
    settings: Settings
    marks: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    def loaded(self, version: int) -> bool:
        return (self.marks / f"loaded-{version}").exists()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        port_file = self.settings.serving_dir / f".slow-{uuid.uuid4().hex[:6]}.port"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_LOADER, str(self.marks), "--model_config_file",
             str(self.settings.models_config), "--rest_api_port", str(self.port), "--port_file", str(port_file)],
            cwd=self.settings.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (self.port and port_file.exists() and is_up(self.url)):
            assert self.proc.poll() is None, "the slow replica exited at start"
            assert time.monotonic() < deadline, "the slow replica did not come up"
            if not self.port and port_file.exists():
                self.port = int(port_file.read_text())
            time.sleep(0.3)
        port_file.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # by the pid this test started
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def slow_replica(serving, stable_model, tmp_path_factory) -> Iterator[SlowReplica]:
    replica = SlowReplica(serving, tmp_path_factory.mktemp("slow-replica"))
    replica.start()
    yield replica
    replica.stop()


@pytest.fixture(scope="module")
def replicated(serving, slow_replica) -> Settings:
    """The session's server first, then the slow one: both read the same models.config."""
    return dataclasses.replace(serving, serving_replicas=(serving.serving_url, slow_replica.url))


@pytest.fixture
def new_version(trained, db_url) -> Callable[[], int]:
    _, row, _ = trained
    return lambda: register_copy(db_url, row, row["artifact_uri"], f"replica-{uuid.uuid4().hex[:8]}")


def test_labels_move_only_once_every_replica_has_loaded_the_version(replicated, slow_replica, new_version,
                                                                     db_url) -> None:  # fmt: skip
    """A watcher reads models.config while the deploy runs: the first moment a label points at the new version,
    the slow replica must already serve it. A deploy that waited for the first replica alone would move the
    canary label some seconds before the slow one had loaded."""
    a, b = only_stable(replicated, db_url), new_version()
    model, policy, run_id = replicated.model_name, DeployPolicy.from_env(), f"replicas-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not seen:
            labels = read_state(replicated).labels
            moved = [label for label, version in labels.items() if version == b]
            if moved:
                seen.append((moved[0], slow_replica.loaded(b)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        planned = steps.plan(replicated, {"version": b, "action": "promote"}, [])
        pushed = steps.push(replicated, policy, planned, run_id)
        started = time.monotonic()
        validated = steps.infra_validate(replicated, policy, planned, pushed, run_id)
        steps.canary(replicated, policy, planned, pushed, run_id)
        steps.promote(replicated, policy, planned, run_id)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert validated["replicas"] == 2
    assert validated["max_abs_diff"] <= policy.infra_tolerance
    assert time.monotonic() - started >= LOAD_DELAY_S  # the deploy did wait for the slow replica's load
    assert seen == [("canary", True)], seen  # the first label on b came once the slow replica served b
    for url in replicated.serving_replicas:
        assert served_label(url, model, "stable") == b, url
    assert (registry.get_version(db_url, b)["status"], registry.get_version(db_url, a)["status"]) == (
        "production", "archived")  # fmt: skip


def test_a_replica_stopped_mid_deploy_leaves_serving_as_it_was_until_a_retry_finishes(
    replicated, slow_replica, new_version, db_url
) -> None:
    a, c = only_stable(replicated, db_url), new_version()
    model, policy, run_id = replicated.model_name, DeployPolicy.from_env(), f"replicas-{uuid.uuid4().hex[:8]}"
    planned = steps.plan(replicated, {"version": c, "action": "promote"}, [])
    pushed = steps.push(replicated, policy, planned, run_id)
    steps.infra_validate(replicated, policy, planned, pushed, run_id)
    steps.canary(replicated, policy, planned, pushed, run_id)
    before = read_state(replicated)
    assert before.labels == {"stable": a, "canary": c}

    slow_replica.stop()  # between the canary and the promotion
    with pytest.raises(DeployError, match=slow_replica.url):
        steps.promote(replicated, policy, planned, run_id)
    assert read_state(replicated) == before  # models.config put back: stable still a, the canary still c
    assert served_label(replicated.serving_url, model, "stable") == a  # the replica that stayed up serves a
    assert (registry.get_version(db_url, c)["status"], registry.get_version(db_url, a)["status"]) == (
        "canary", "production")  # fmt: skip
    with db.engine(db_url).connect() as conn:
        failed = conn.execute(sa.select(db.deployments.c.reason).where(
            db.deployments.c.run_id == run_id, db.deployments.c.action == "promote",
            ~db.deployments.c.succeeded)).scalars().all()  # fmt: skip
    assert len(failed) == 1, failed
    assert slow_replica.url in failed[0], failed

    slow_replica.start()  # back on its port, it reads the same models.config: stable a, canary c
    wait_for_server(lambda: served_label(slow_replica.url, model, "stable") == a, "restarted replica: stable a")
    promoted = steps.promote(replicated, policy, planned, run_id)  # Airflow's retry of the same run
    assert promoted["changed"]
    assert promoted["previous"] == a
    assert read_state(replicated).labels == {"stable": c}
    for url in replicated.serving_replicas:
        assert served_label(url, model, "stable") == c, url
    assert (registry.get_version(db_url, c)["status"], registry.get_version(db_url, a)["status"]) == (
        "production", "archived")  # fmt: skip
    with db.engine(db_url).connect() as conn:
        done = conn.execute(sa.select(sa.func.count()).where(
            db.deployments.c.run_id == run_id, db.deployments.c.action == "promote",
            db.deployments.c.succeeded)).scalar()  # fmt: skip
    assert done == 1


def test_the_health_check_names_a_replica_that_is_down(replicated, slow_replica) -> None:
    from include.core.config import ServingHealth
    from include.predict.health import probe

    version, state = probe(replicated, ServingHealth())
    assert state == "AVAILABLE"
    assert version == served_label(replicated.serving_url, replicated.model_name, "stable")
    slow_replica.stop()
    try:
        version, state = probe(replicated, ServingHealth())
        assert state != "AVAILABLE"
        assert f"replica {slow_replica.url}: vNone unreachable" in state, state
        assert f"replica {replicated.serving_url}: v{version} AVAILABLE" in state, state
    finally:
        slow_replica.start()
