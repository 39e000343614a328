"""Three nights under the real scheduler, with the `postgres`, `promote` and `landing` faults: the
short run of `bin/nightshift nights`, exactly as a user runs it, in its own state folder (its own
embedded Postgres, which the postgres fault stops and starts, its own lake, serving and Airflow).

It runs on CeleryExecutor (`NIGHTSHIFT_EXECUTOR=celery`): the chain's tasks go through the machine's
Redis to two default workers and a training worker, which is more of Airflow than LocalExecutor runs
(the other integration tests and `make demo` run LocalExecutor).

The budget is the smallest that still trains, gates and deploys a real model each night: a 17-day
bootstrap, 7 training days, 1 random-search trial of 2 epochs and no warm start, and a gate loosened
for such a small model (`NIGHTSHIFT_GATE_*`). The nights themselves are what `make nights` runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.nights_harness import DEADLINE_MIN, FAULTS, LOCAL, started

# In `make test`'s integration tier (started at collection, beside the rest: tests/nights_harness.py);
# `make test-nights` runs it alone. The run is collected in the first test's module fixture: the suite's
# 900-s per-test limit would cut it short.
pytestmark = [pytest.mark.nights, pytest.mark.timeout((DEADLINE_MIN + 10) * 60)]


@pytest.fixture(scope="module")
def nights_run(request):
    """The harness's exit status and output, and its report."""
    run = started(request.config)
    returncode = run.wait()
    done = SimpleNamespace(returncode=returncode, stdout=run.log.read_text(errors="replace")[-20000:])
    report_file = LOCAL / "nights" / "report.json"
    assert report_file.exists(), f"no report (exit {done.returncode}):\n{done.stdout[-8000:]}\n{_scheduler_tail(LOCAL)}"
    return done, json.loads(report_file.read_text())


def _scheduler_tail(local: Path) -> str:
    """The end of the scheduler's log: why a run did not move, when the harness did not settle."""
    logs = sorted((local / "nights" / "logs").glob("scheduler*.log"))
    return "".join(f"--- {p.name} (last 4000 characters)\n{p.read_text(errors='replace')[-4000:]}" for p in logs)


def test_three_nights_with_faults_keep_every_invariant(nights_run):
    done, report = nights_run
    assert report["failed_invariants"] == [], done.stdout[-4000:]
    assert done.returncode == 0, done.stdout[-4000:]
    invariants = report["invariants"]
    assert invariants["rows_lost"] == 0
    assert invariants["rows_duplicated"] == 0
    assert invariants["max_trainings_per_night"] <= 1
    assert invariants["registry_matches_serving"] is True
    assert invariants["predictions_logged_under_served_version"] is True
    assert invariants["alerts_pending"] == 0
    assert invariants["alerts_delivered_twice"] == 0
    assert invariants["probe_requests"] > 60
    assert invariants["probe_failures"] == 0


def test_every_fault_was_injected_and_every_night_ran_the_chain(nights_run):
    _, report = nights_run
    assert sorted(report["faults"]) == sorted(FAULTS), report["per_night"]
    assert report["nights"] == 3
    assert len(report["per_night"]) == 3
    days = [night["replays"] for night in report["per_night"]]
    assert days == sorted(days)
    assert len(set(days)) == 3
    for night in report["per_night"]:
        assert night["ingest"] == "success", night
        # The night's day, and only it, is monitored that night. Night 1's monitor run also consumes the demo's
        # features events (Airflow's first Asset-triggered run takes every event since the DAG's last run), but
        # leaves out the serving version's own data window and the week the demo already monitored.
        assert night["monitored_days"] == [night["replays"]], night
        assert night["trainings"] + night["skipped_trainings"] >= 1, night  # trained, or skipped as identical
    assert any(night["deploys"] for night in report["per_night"]), report["per_night"]


def test_the_faults_left_their_marks_and_the_retries_converged(nights_run):
    _, report = nights_run
    by_fault = {fault: night for night in report["per_night"] for fault in night["faults"]}
    # Postgres stopped under materialize: the task failed and its retry published the day.
    assert any(t.startswith("nightshift_ingest.materialize") for t in by_fault["postgres"]["retried_tasks"])
    # promote killed after the label moved: its retry completed the registry and the record.
    promoted = by_fault["promote"]
    assert any(d.startswith("promote v") for d in promoted["deploys"]), promoted
    assert any(t.startswith("nightshift_deploy.promote") for t in promoted["retried_tasks"]), promoted
    # The broken drop failed collect at once (no retry burnt on it); on-call's clear re-ran it, once.
    landing = by_fault["landing"]
    assert "removed part-1.csv, part-2.parquet" in landing["fault_detail"]["landing"]
    assert "validation_failed" not in landing["alert_kinds"]
    assert "task_failed" in landing["alert_kinds"] or landing["alerts"] >= 1


def test_the_nights_ran_on_celery_workers_each_on_its_queue(nights_run):
    _, report = nights_run
    assert report["executor"] == "CeleryExecutor"
    tries = report["task_instances"]
    assert tries
    workers = {t["hostname"].split("@")[0] for t in tries}
    assert workers <= {"worker-default-1", "worker-default-2", "worker-training"}, workers
    assert len(workers) >= 2, report["workers"]  # more than one worker did the nights' work
    training = [t for t in tries if t["dag_id"] == "nightshift_train" and t["task_id"] in ("tune", "evaluate")]
    assert training
    assert {(t["queue"], t["hostname"].split("@")[0]) for t in training} == {("training", "worker-training")}
    others = [t for t in tries if t not in training]
    assert {t["queue"] for t in others} == {"default"}
    assert {t["hostname"].split("@")[0] for t in others} <= {"worker-default-1", "worker-default-2"}
