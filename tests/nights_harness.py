"""The nights harness's run for `tests/integration/test_nights.py`, started as early as the session allows.

`bin/nightshift nights --nights 3 --faults postgres,promote,landing` runs in a state of its own (its own
embedded Postgres, lake, serving, Airflow and ports) for about 15 minutes, much of it waiting on its own
scheduler with a core to spare. So when a session selects the nights tests and others, the run starts at
collection, beside the rest of the suite, and the nights tests go last and collect it
(`pytest_collection_modifyitems` below). Alone (`make test-nights`), it starts when its fixture asks.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from benchmarks.s3_demo import state_of_its_own
from tests.factories import SMALL_CHAIN

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / ".local" / "test-nights"
FAULTS = ["postgres", "promote", "landing"]
BROKER = "redis://127.0.0.1:6379/12"  # a Redis database of this run's own, emptied first
DEADLINE_MIN = 40  # 13-17 min alone on 2 cores; beside the suite, longer. The harness gives up at this, saying why
_KEY = pytest.StashKey["Run"]()


@dataclass
class Run:
    process: subprocess.Popen
    log: Path
    out: IO[str]

    def wait(self) -> int | str:
        """The harness's exit status; past its deadline (or on an interrupted session) it is stopped, by pid."""
        try:
            return self.process.wait(timeout=(DEADLINE_MIN + 4) * 60)
        except subprocess.TimeoutExpired:
            return f"none: still running after {DEADLINE_MIN + 4} min, terminated"
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the harness stops its Airflow, serving and Postgres on the way out
            try:
                self.process.wait(timeout=240)
            except subprocess.TimeoutExpired:
                self.process.kill()  # its Airflow components die with it (PR_SET_PDEATHSIG)
                self.process.wait(timeout=30)
        self.out.close()


def start() -> Run:
    """`bin/nightshift nights --nights 3 --faults postgres,promote,landing` in `.local/test-nights`."""
    # Not under pytest's temporary folder: pytest keeps its base 0700, which the embedded Postgres's
    # unprivileged user (pgserver, when run as root) cannot traverse once another pytest session resets it.
    shutil.rmtree(LOCAL, ignore_errors=True)
    LOCAL.mkdir(parents=True)
    # Nothing of the test session's own stack (its database, its Airflow) reaches the harness, and it binds
    # no fixed port: its demo's serving takes a free one, as its own stack does.
    env = state_of_its_own(LOCAL, {**SMALL_CHAIN, "NIGHTSHIFT_EXECUTOR": "celery",
                                   "NIGHTSHIFT_CELERY_BROKER_URL": BROKER,
                                   "NIGHTSHIFT_SERVING_URL": "http://127.0.0.1:0"})  # fmt: skip
    import redis

    with redis.Redis.from_url(BROKER, socket_timeout=5, socket_connect_timeout=5) as broker:
        broker.flushdb()  # no task message of an earlier run
    log = LOCAL / "harness.log"
    command = [str(ROOT / "bin" / "nightshift"), "nights", "--nights", "3", "--faults", ",".join(FAULTS),
               "--deadline", str(DEADLINE_MIN)]  # fmt: skip
    out = log.open("w")
    return Run(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT), log, out)


def started(config: pytest.Config) -> Run:
    """The session's run: the one started at collection, else one started now."""
    if _KEY not in config.stash:
        config.stash[_KEY] = start()
    return config.stash[_KEY]


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    nights = [item for item in items if item.get_closest_marker("nights")]
    if not nights or len(nights) == len(items) or config.option.collectonly:
        return
    items[:] = [item for item in items if item not in nights] + nights
    started(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _KEY in config.stash:
        config.stash[_KEY].stop()  # an interrupted session leaves no harness behind
