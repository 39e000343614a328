"""`bin/nightshift nights` (`make nights`): N consecutive nights of the chain as the scheduler runs
them, with faults injected on chosen nights, and the invariants checked after every night.

* **The stack** is the real Airflow on nightshift's Postgres (embedded, or DATABASE_URL): scheduler,
  dag-processor, triggerer and api-server with LocalExecutor, supervised as systemd would (a
  component that exits is started again), and the local serving process under its supervisor.
  After `make demo`; on a fresh state it runs the demo first.
* **The nights** are the N New York nights ending yesterday. One Airflow backfill of
  `nightshift_ingest` over them (`max_active_runs` 1) holds every night's run; the scheduler creates
  and runs them, and the Asset-triggered train, deploy and monitor runs follow each one. The
  harness keeps the backfill paused between nights and releases one night at a time, once the
  previous night's chain has settled, as 24 hours would.
* **The clock**: night k replays the k-th 2013 day after the data already published
  (`NIGHTSHIFT_REPLAY_*`, written to the replay clock file so `make airflow` continues from there).
* **The upstream system** drops each night's flights under `landing/flights/date=…/` just before
  the night (`NIGHTSHIFT_SOURCE=landing`).
* **The faults** (`--faults a,b`, night by night in order, or `name@N` for night N): see `FAULTS`.
  A fault whose moment never comes on its night (no training, no deploy) stays armed into the next.
* **The prober** sends one real prediction a second to `stable` for the whole run.
* **The report**: `.local/nights/report.json`, printed as a table; the exit status is 1 when an
  invariant fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa

from include import db
from include.core.assets import DEPLOY_DAG, INGEST_DAG, MONITOR_DAG, TRAIN_DAG
from include.core.calendar import LOCAL_TZ
from include.core.config import Settings, load_settings
from include.core.faults import FAILPOINT_DIR, PROMOTE_LABEL_MOVED
from include.ops.nights_rig import Prober, Processes, Receivers, drop_landing, repair_landing
from include.ops.runtime import airflow_processes

log = logging.getLogger("nightshift.nights")

NY = ZoneInfo(LOCAL_TZ)
DAGS = (INGEST_DAG, TRAIN_DAG, DEPLOY_DAG, MONITOR_DAG)
CHAIN = (TRAIN_DAG, DEPLOY_DAG, MONITOR_DAG)
FAULTS = {
    "postgres": "stop Postgres immediately during materialize, start it again 20 s later",
    "scheduler": "SIGKILL the scheduler during training, then start it again",
    "promote": "SIGKILL promote's task process right after the stable label moves",
    "serving": "SIGKILL the serving process during the canary (its supervisor restarts it)",
    "landing": "a truncated file and a garbage file in the night's drop; on-call removes them and clears the run",
    "channels": "the webhook receiver down and the mail relay refusing, for the whole night",
    "disk": "the lake's disk full during clean (a 64 KiB tmpfs), freed after the first failure",
}
POSTGRES_DOWN_S = 20
DISK_FILLER = ".nights-disk-full"
POLL_S = 2.0
SETTLED_POLLS = 3  # the chain is quiet this many polls in a row (5 s apart) before the night ends
SETTLE_GAP_S = 5.0
NIGHT_TIMEOUT_S = 45 * 60
PROGRESS_EVERY_S = 120  # a line saying what the harness waits for, while a settle lasts longer than this
READY_TIMEOUT_S = 240
HTTP_TIMEOUT_S = 30


class NightsError(RuntimeError):
    """The harness cannot go on (bad arguments, a state it cannot run on, a night that never settles)."""


@dataclass
class Night:
    index: int
    night: dt.date  # the New York night the scheduler runs
    day: dt.date  # the 2013 day it replays
    faults: list[str]
    fired: dict[str, str] = field(default_factory=dict)
    began: dt.datetime | None = None
    ended: dt.datetime | None = None
    dropped_rows: int = 0


def plan_nights(count: int, faults: list[str], last_night: dt.date, first_day: dt.date) -> list[Night]:
    """`count` nights ending `last_night`; `faults` are given to nights 1, 2, … in order (`name@N`: night N)."""
    if count < 1:
        raise NightsError("--nights must be at least 1")
    nights = [Night(i + 1, last_night - dt.timedelta(days=count - 1 - i), first_day + dt.timedelta(days=i), [])
              for i in range(count)]  # fmt: skip
    for position, spec in enumerate(faults):
        name, _, at = spec.partition("@")
        if name not in FAULTS:
            raise NightsError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
        index = int(at) if at else position % count + 1
        if not 1 <= index <= count:
            raise NightsError(f"fault {spec!r}: night {index} is not one of the {count} nights")
        nights[index - 1].faults.append(name)
    return nights


# -- the Airflow REST API, as a script calls it --------------------------------------------------------


class Api:
    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.password = password
        self._token: str | None = None

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            response = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.password},
                                  timeout=HTTP_TIMEOUT_S)  # fmt: skip
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def call(self, method: str, path: str, tries: int = 10, **kwargs: Any) -> Any:
        """One REST call; a refused connection or a 5xx (the api-server restarting, Postgres down) is retried."""
        for attempt in range(1, tries + 1):
            try:
                response = httpx.request(method, f"{self.url}/api/v2{path}", headers=self._auth(),
                                         timeout=HTTP_TIMEOUT_S, **kwargs)  # fmt: skip
                if response.status_code == 401:
                    self._token = None
                if response.status_code < 500 and response.status_code != 401:
                    if response.status_code >= 400:
                        raise NightsError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
                    return response.json() if response.content else None
            except httpx.HTTPError as err:
                log.warning("%s %s: %s (try %d)", method, path, type(err).__name__, attempt)
            time.sleep(min(2 * attempt, 10))
        raise NightsError(f"{method} {path} failed {tries} times")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- reading what happened, from Postgres ----------------------------------------------------------------


def _rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with db.engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


def _ingest_run(url: str, night: dt.date) -> dict[str, Any] | None:
    logical = dt.datetime.combine(night, dt.time(), NY)
    found = _rows(url, "SELECT run_id, state FROM dag_run WHERE dag_id = :d AND logical_date = :l",
                  d=INGEST_DAG, l=logical)  # fmt: skip
    return found[0] if found else None


def waiting_on(url: str) -> str:
    """What Airflow is busy with, in one line: the unfinished runs, their unfinished tasks, the Asset queue."""
    runs = _rows(url, "SELECT dag_id, state, count(*) AS n FROM dag_run WHERE state IN ('queued', 'running') "
                      "GROUP BY dag_id, state ORDER BY dag_id")  # fmt: skip
    tasks = _rows(url, "SELECT ti.dag_id, ti.task_id, ti.state, ti.try_number FROM task_instance ti JOIN dag_run r "
                       "ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id WHERE r.state = 'running' AND (ti.state IS "
                       "NULL OR ti.state NOT IN ('success', 'skipped', 'failed', 'upstream_failed', 'removed')) "
                       "ORDER BY ti.dag_id, ti.task_id")  # fmt: skip
    queued = _rows(url, "SELECT target_dag_id, count(*) AS n FROM asset_dag_run_queue GROUP BY target_dag_id")
    parts = [", ".join(f"{r['dag_id']} {r['n']} {r['state']}" for r in runs) or "no run queued or running"]
    if tasks:
        parts.append("tasks " + ", ".join(f"{t['dag_id']}.{t['task_id']} {t['state'] or 'none'} (try {t['try_number']})"
                                          for t in tasks[:12]) + (" …" if len(tasks) > 12 else ""))  # fmt: skip
    if queued:
        parts.append("Asset queue " + ", ".join(f"{q['target_dag_id']} {q['n']}" for q in queued))
    return "; ".join(parts)


def _tasks_since(url: str, since: dt.datetime) -> list[dict[str, Any]]:
    """Task instances running, waiting to retry or failed, that started after `since`."""
    return _rows(url, "SELECT dag_id, run_id, task_id, state, pid FROM task_instance WHERE state IN "
                      "('running', 'up_for_retry', 'failed') AND dag_id = ANY(:d) AND start_date >= :s",
                 d=list(DAGS), s=since)  # fmt: skip


def _quiet(url: str, night: dt.date) -> bool:
    run = _ingest_run(url, night)
    if run is None or run["state"] not in ("success", "failed"):
        return False
    return _chain_quiet(url)


def _chain_quiet(url: str) -> bool:
    """No train, deploy or monitor run queued or running, and no Asset event waiting to start one."""
    # The other nights' ingest runs wait, queued, in the paused backfill: only the chain counts.
    active = _rows(url, "SELECT count(*) AS n FROM dag_run WHERE dag_id = ANY(:d) AND state IN ('queued', 'running')",
                   d=list(CHAIN))[0]["n"]  # fmt: skip
    queued = _rows(url, "SELECT count(*) AS n FROM asset_dag_run_queue")[0]["n"]
    return active == 0 and queued == 0


# -- the harness ------------------------------------------------------------------------------------------


@dataclass
class Harness:
    settings: Settings
    env: dict[str, str]
    nights: list[Night]
    out: Path
    api: Api | None = None
    procs: Processes | None = None
    receivers: Receivers = field(default_factory=Receivers)
    prober: Prober | None = None
    serving: Any = None
    backfill_id: int | None = None
    backfill_paused: bool = False
    carried: list[str] = field(default_factory=list)
    disk: Path | None = None  # the tmpfs of the `disk` fault, while mounted
    deadline: float | None = None  # time.monotonic() by which the whole run ends (`--deadline`), or None

    @property
    def url(self) -> str:
        return self.env["NIGHTSHIFT_DATABASE_URL"]

    @property
    def failpoints(self) -> Path:
        return Path(self.env[FAILPOINT_DIR])

    # -- the nights --------------------------------------------------------------------------------

    def create_backfill(self) -> None:
        first, last = self.nights[0].night, self.nights[-1].night
        existing = [n.night for n in self.nights if _ingest_run(self.url, n.night)]
        if existing:
            raise NightsError(f"{INGEST_DAG} already has runs for {existing[0]}…{existing[-1]}: these nights "
                              "ran before; use a fresh state (`make clean`, or another NIGHTSHIFT_LOCAL_DIR)"
                              )  # fmt: skip
        backfill = self.api.call("POST", "/backfills", json={
            "dag_id": INGEST_DAG, "from_date": dt.datetime.combine(first, dt.time(), NY).isoformat(),
            "to_date": dt.datetime.combine(last, dt.time(), NY).isoformat(), "run_backwards": False,
            "dag_run_conf": {}, "reprocess_behavior": "none", "max_active_runs": 1,
        })  # fmt: skip
        self.backfill_id = backfill["id"]
        self.api.call("PUT", f"/backfills/{self.backfill_id}/pause")
        self.backfill_paused = True
        missing = [n.night for n in self.nights if _ingest_run(self.url, n.night) is None]
        if missing:
            raise NightsError(f"the backfill created no run for the nights {missing}")

    def release(self, night: Night) -> None:
        """Let the scheduler start this night's ingest run, and only it: unpause the backfill until it runs.

        After the last night's run the backfill stays unpaused: no later night waits in it, and once its
        runs have all ended Airflow marks it completed and refuses to unpause it (HTTP 409), while a paused
        backfill never starts a run that on-call clears (the `landing` fault on the last night)."""
        if self.backfill_paused:
            self.api.call("PUT", f"/backfills/{self.backfill_id}/unpause")
            self.backfill_paused = False
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(sa.exc.OperationalError):
                    run = _ingest_run(self.url, night.night)
                    if run and run["state"] != "queued":
                        return
                time.sleep(0.5)
            raise NightsError(f"the scheduler did not start the ingest run of {night.night} in 10 minutes")
        finally:
            if night is not self.nights[-1]:
                self.api.call("PUT", f"/backfills/{self.backfill_id}/pause")
                self.backfill_paused = True

    def run_night(self, night: Night) -> None:
        night.began = dt.datetime.now(dt.UTC)
        pending = self.carried + night.faults
        self.carried = []
        print(f"==> night {night.index}/{len(self.nights)}: {night.night} replays {night.day}"
              + (f"; faults: {', '.join(pending)}" if pending else ""), flush=True)  # fmt: skip
        night.dropped_rows = drop_landing(self.settings, night.day, faulty="landing" in pending)
        if "channels" in pending:
            self.receivers.down()
            night.fired["channels"] = "webhook receiver down, mail relay answering 451 for the night"
        mounted = "disk" in pending and self._fill_disk(night)
        if "promote" in pending:
            (self.failpoints / f"{PROMOTE_LABEL_MOVED}.armed").touch()
        self.release(night)

        def quiet() -> bool:
            self._inject(night, pending, mounted)
            return _quiet(self.url, night.night) and not self._repair(night, pending)

        try:
            self.settle(f"night {night.night}", quiet)
        finally:
            if "channels" in pending:
                self.receivers.up()
            if mounted:
                self._free_disk()
        (self.failpoints / f"{PROMOTE_LABEL_MOVED}.armed").unlink(missing_ok=True)
        self.carried = [f for f in pending if f not in night.fired]
        for fault in self.carried:
            print(f"    fault {fault}: its moment did not come on this night; armed again for the next", flush=True)
        night.ended = dt.datetime.now(dt.UTC)

    def settle(self, what: str, quiet: Callable[[], bool]) -> None:
        """Poll `quiet` until it holds SETTLED_POLLS times in a row (Postgres down counts as not quiet).

        It gives up after NIGHT_TIMEOUT_S, or at the run's `--deadline`, saying what Airflow was still busy
        with; every PROGRESS_EVERY_S it prints that while it waits."""
        began = time.monotonic()
        deadline, calm, said = began + NIGHT_TIMEOUT_S, 0, began
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        while calm < SETTLED_POLLS:
            now = time.monotonic()
            if now > deadline:
                limit = "the run's --deadline" if deadline == self.deadline else f"{NIGHT_TIMEOUT_S // 60} minutes"
                raise NightsError(f"{what} did not settle by {limit} ({(now - began) / 60:.1f} min): "
                                  f"{self._busy()}")  # fmt: skip
            if now - said >= PROGRESS_EVERY_S:
                said = now
                print(f"    … {what}, {(now - began) / 60:.0f} min: {self._busy()}", flush=True)
            try:
                settled = quiet()
            except sa.exc.OperationalError:
                settled = False  # Postgres is down (the fault) or restarting
            calm = calm + 1 if settled else 0
            time.sleep(SETTLE_GAP_S if settled else POLL_S)

    def _busy(self) -> str:
        try:
            return waiting_on(self.url)
        except sa.exc.OperationalError as err:
            return f"Postgres unreachable ({str(err.orig).strip()[:120]})"

    def startup(self) -> Night:
        """Unpause the DAGs and let the chain finish what was already waiting (the demo's Asset events
        start a training and a monitor run): that is not a night's work, and is reported apart."""
        first = self.nights[0]
        before = Night(0, first.night - dt.timedelta(days=1), first.day - dt.timedelta(days=1), [])
        before.began = dt.datetime.now(dt.UTC)
        for dag_id in DAGS:
            self.api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        print("==> DAGs unpaused; the chain first finishes what was already queued (the demo's Asset events)",
              flush=True)  # fmt: skip
        time.sleep(10)
        self.settle("the start", lambda: _chain_quiet(self.url))
        before.ended = dt.datetime.now(dt.UTC)
        return before

    def _inject(self, night: Night, pending: list[str], mounted: bool) -> None:
        tasks = _tasks_since(self.url, night.began)
        ingest = _ingest_run(self.url, night.night) or {}

        def running(dag_id: str, prefix: str, run_id: str | None = None) -> bool:
            return any(t["dag_id"] == dag_id and t["task_id"].startswith(prefix) and t["state"] == "running"
                       and (run_id is None or t["run_id"] == run_id) for t in tasks)  # fmt: skip

        if "postgres" in pending and "postgres" not in night.fired and running(INGEST_DAG, "materialize",
                                                                                 ingest.get("run_id")):  # fmt: skip
            self._postgres_down(night)
        if "scheduler" in pending and "scheduler" not in night.fired and running(TRAIN_DAG, "tune"):
            pid = self.procs.kill("scheduler")
            night.fired["scheduler"] = f"SIGKILL scheduler pid {pid} during tune; its supervisor started it again"
            print(f"    fault scheduler: {night.fired['scheduler']}", flush=True)
        if "promote" in pending and "promote" not in night.fired:
            hit = self.failpoints / f"{PROMOTE_LABEL_MOVED}.hit"
            if hit.exists():
                pid = int(hit.read_text())
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                hit.unlink()
                night.fired["promote"] = f"SIGKILL promote's task process {pid} after stable moved"
                print(f"    fault promote: {night.fired['promote']}", flush=True)
        if "serving" in pending and "serving" not in night.fired and running(DEPLOY_DAG, "canary"):
            pid = self.serving.pid
            if pid:
                self.prober.outage_until = time.monotonic() + 30
                os.kill(pid, signal.SIGKILL)
                night.fired["serving"] = f"SIGKILL serving pid {pid} during the canary"
                print(f"    fault serving: {night.fired['serving']}", flush=True)
        if (
            mounted
            and "disk" not in night.fired
            and any(
                t["dag_id"] == INGEST_DAG and t["task_id"] == "clean" and t["state"] in ("up_for_retry", "failed")
                for t in tasks
            )
        ):
            self._free_disk()
            night.fired["disk"] = "clean failed on a full disk; the disk was freed before its retry"
            print(f"    fault disk: {night.fired['disk']}", flush=True)

    def _postgres_down(self, night: Night) -> None:
        from include.ops.postgres import embedded_data_dir, kill_embedded, start_embedded

        data_dir = embedded_data_dir(self.settings.local_dir)
        kill_embedded(data_dir)
        print(f"    fault postgres: stopped immediately during materialize; starting it in {POSTGRES_DOWN_S} s",
              flush=True)  # fmt: skip
        time.sleep(POSTGRES_DOWN_S)
        for attempt in range(1, 4):
            try:
                start_embedded(data_dir)
                break
            except subprocess.CalledProcessError:
                if attempt == 3:
                    raise
                time.sleep(5)
        night.fired["postgres"] = f"Postgres stopped immediately during materialize, started {POSTGRES_DOWN_S} s later"

    def _repair(self, night: Night, pending: list[str]) -> bool:
        """On-call after the `landing` fault: take out the broken files and clear the failed run. True: repaired now."""
        run = _ingest_run(self.url, night.night)
        if "landing" not in pending or "landing" in night.fired or not run or run["state"] != "failed":
            return False
        removed = repair_landing(self.settings, night.day)
        self.api.call("POST", f"/dags/{INGEST_DAG}/clearTaskInstances", json={
            "dag_run_id": run["run_id"], "only_failed": True, "reset_dag_runs": True, "dry_run": False,
        })  # fmt: skip
        night.fired["landing"] = f"ingest failed on the drop; removed {', '.join(removed)} and cleared the run"
        print(f"    fault landing: {night.fired['landing']}", flush=True)
        self.release(night)
        return True

    def _fill_disk(self, night: Night) -> bool:
        from include.core import lake

        target = Path(str(lake.partition_dir(lake.lake_root(self.settings), "clean", "flights", night.day).path))
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode != 0:
            message = f"skipped: this machine allows no size-limited mount ({done.stderr.strip()[:120]})"
            night.fired["disk"] = message
            print(f"    fault disk: {message}", flush=True)
            return False
        self.disk = target
        # Filled to the last page: every write into the partition fails with ENOSPC, whatever its size (a
        # day's clean flights, ~45 KB, fitted into the empty 64 KiB and vanished with the unmount).
        fd = os.open(target / DISK_FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        return True

    def _free_disk(self) -> None:
        """Unmount the full disk, keeping whatever was written to it (nothing, when the fault worked)."""
        if self.disk is None:
            return
        kept = {p.name: p.read_bytes() for p in self.disk.iterdir() if p.name != DISK_FILLER}
        subprocess.run(["umount", str(self.disk)], capture_output=True, timeout=30, check=False)
        for name, data in kept.items():
            (self.disk / name).write_bytes(data)
        self.disk = None


# -- the report ---------------------------------------------------------------------------------------------


def night_report(url: str, night: Night) -> dict[str, Any]:
    """What the scheduler did in this night's window, read back from Postgres."""
    ingest = _ingest_run(url, night.night) or {}
    runs = _rows(url, "SELECT dag_id, run_id, state, run_type FROM dag_run WHERE dag_id = ANY(:d) AND "
                      "queued_at >= :b AND queued_at < :e", d=list(CHAIN), b=night.began, e=night.ended)  # fmt: skip
    run_ids = {d: [r["run_id"] for r in runs if r["dag_id"] == d] for d in CHAIN}
    versions = _rows(url, "SELECT version FROM nightshift.model_versions WHERE run_id = ANY(:r) ORDER BY version",
                     r=run_ids[TRAIN_DAG])  # fmt: skip
    skipped = _rows(url, "SELECT count(*) AS n FROM nightshift.runs WHERE dag_id = :d AND run_id = ANY(:r) AND "
                         "outcome LIKE 'skipped%'", d=TRAIN_DAG, r=run_ids[TRAIN_DAG])[0]["n"]  # fmt: skip
    deploys = _rows(url, "SELECT action, version FROM nightshift.deployments WHERE run_id = ANY(:r) AND succeeded "
                         "AND action IN ('promote', 'rollback') ORDER BY id", r=run_ids[DEPLOY_DAG])  # fmt: skip
    monitored = _rows(url, "SELECT DISTINCT partition_date FROM nightshift.drift_reports WHERE run_id = ANY(:r) "
                           "ORDER BY partition_date", r=run_ids[MONITOR_DAG])  # fmt: skip
    alerts = _rows(url, "SELECT kind, severity FROM nightshift.alerts WHERE created_at >= :b AND created_at < :e",
                   b=night.began, e=night.ended)  # fmt: skip
    all_runs = [*runs, {"dag_id": INGEST_DAG, **ingest}] if ingest else runs
    retried = _rows(url, "SELECT dag_id, task_id, try_number FROM task_instance WHERE run_id = ANY(:r) AND "
                         "try_number > 1 ORDER BY dag_id, task_id", r=[r["run_id"] for r in all_runs])  # fmt: skip
    trained = [v["version"] for v in versions]
    return {
        "night": night.night.isoformat(),
        "replays": night.day.isoformat(),
        "ingest": ingest.get("state"),
        "trainings": len(trained),
        "skipped_trainings": int(skipped),
        "versions": trained,
        "deploys": [f"{d['action']} v{d['version']}" for d in deploys],
        "monitored_days": [m["partition_date"].isoformat() for m in monitored],
        "alerts": len(alerts),
        "alert_kinds": sorted({a["kind"] for a in alerts}),
        "faults": list(night.fired),
        "fault_detail": night.fired,
        "failed_runs": [f"{r['dag_id']} {r['run_id']}" for r in all_runs if r.get("state") == "failed"],
        "retried_tasks": [f"{r['dag_id']}.{r['task_id']} (try {r['try_number']})" for r in retried],
        "dropped_rows": night.dropped_rows,
        "wall_s": round((night.ended - night.began).total_seconds(), 1),
    }


def served_during(url: str, model: str, began: dt.datetime, ended: dt.datetime | None) -> set[int | None]:
    """The versions `stable` pointed at, at some moment between `began` and `ended` (a monitor run
    scores with the version stable when it starts; a promote may land while it runs)."""
    before = _rows(url, "SELECT stable_version FROM nightshift.deployments WHERE model = :m AND succeeded AND "
                        "created_at <= :t ORDER BY created_at DESC, id DESC LIMIT 1", m=model, t=began)  # fmt: skip
    during = _rows(
        url,
        "SELECT stable_version FROM nightshift.deployments WHERE model = :m AND succeeded AND "
        "created_at > :b AND created_at <= :e",
        m=model,
        b=began,
        e=ended or dt.datetime.now(dt.UTC),
    )
    return {before[0]["stable_version"] if before else None} | {r["stable_version"] for r in during}


def rows_on_disk(settings: Settings, zone: str, dataset: str, day: dt.date) -> int:
    """Rows in the day's partition file as the lake holds it now (0 when the file is gone)."""
    import pyarrow.parquet as pq

    from include.core import lake

    path = lake.partition_file(lake.lake_root(settings), zone, dataset, day)
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def facts(settings: Settings, url: str, nights: list[Night], per_night: list[dict[str, Any]], receivers: Receivers,
          prober: Prober | None) -> dict[str, Any]:  # fmt: skip
    """The numbers the invariants judge, over every night so far."""
    from include.serving.state import read_state
    from include.train.registry import production_version

    days = [n.day for n in nights if n.ended]
    counts = {
        (r["dataset"], r["partition_date"]): r["rows"]
        for r in _rows(
            url,
            "SELECT dataset, partition_date, rows FROM nightshift.partitions WHERE partition_date = ANY(:d)",
            d=days,
        )
    }
    lost = duplicated = 0
    for night in (n for n in nights if n.ended):
        raw = counts.get(("raw/flights", night.day), 0)
        kept = counts.get(("clean/flights", night.day), 0) + counts.get(("quarantine/flights", night.day), 0)
        lost += max(0, night.dropped_rows - raw) + max(0, raw - kept)
        duplicated += max(0, raw - night.dropped_rows) + max(0, kept - raw)
        # What Postgres records must still be in the lake (a fault's unmount once took a partition).
        lost += max(0, counts.get(("clean/flights", night.day), 0) - rows_on_disk(settings, "clean", "flights",
                                                                                    night.day))  # fmt: skip
    state = read_state(settings)
    production = production_version(url)
    last = _rows(url, "SELECT stable_version, canary_version FROM nightshift.deployments WHERE model = :m AND "
                      "succeeded ORDER BY id DESC LIMIT 1", m=settings.model_name)  # fmt: skip
    registry = {"stable_label": state.stable, "canary_label": state.canary,
                "production_version": production["version"] if production else None,
                "last_deployment_stable": last[0]["stable_version"] if last else None}  # fmt: skip
    monitored = _rows(url, "SELECT d.partition_date, min(d.model_version) AS lo, max(d.model_version) AS hi, "
                           "min(r.start_date) AS began, max(r.end_date) AS ended FROM nightshift.drift_reports d "
                           "JOIN dag_run r ON r.dag_id = :m AND r.run_id = d.run_id WHERE d.partition_date = ANY(:d) "
                           "GROUP BY d.partition_date", m=MONITOR_DAG, d=days)  # fmt: skip
    mislogged = [m["partition_date"].isoformat() for m in monitored if m["lo"] != m["hi"]
                 or m["lo"] not in served_during(url, settings.model_name, m["began"], m["ended"])]  # fmt: skip
    began = min(n.began for n in nights if n.began)
    pending = _rows(url, "SELECT uid FROM nightshift.alerts WHERE delivered_at IS NULL AND created_at >= :b", b=began)
    sent = _rows(url, "SELECT uid FROM nightshift.alerts WHERE delivered_at IS NOT NULL AND created_at >= :b", b=began)
    undelivered = [a["uid"] for a in sent if not (receivers.mails.get(a["uid"]) and receivers.posts.get(a["uid"]))]
    return {
        "rows_lost": lost,
        "rows_duplicated": duplicated,
        "max_trainings_per_night": max((p["trainings"] for p in per_night), default=0),
        "registry": registry,
        "mislogged_days": mislogged,
        "alerts_pending": len(pending) + _spooled(settings),
        "alerts_missing_at_receivers": len(undelivered),
        "alerts_delivered_twice": receivers.delivered_twice(),
        "nights_not_converged": [p["night"] for p in per_night if p["ingest"] != "success"],
        **(prober.summary() if prober else {"probe_requests": 0, "probe_failures": 0}),
    }


def _spooled(settings: Settings) -> int:
    from include.core.config import AlertOutbox

    path = AlertOutbox.from_env().spool_file(settings.local_dir)
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def invariants(found: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The report's `invariants` and the ones that failed (each failure says why)."""
    registry = found["registry"]
    matches = (registry["stable_label"] == registry["production_version"] == registry["last_deployment_stable"]
               and registry["canary_label"] is None)  # fmt: skip
    result = {
        "rows_lost": found["rows_lost"],
        "rows_duplicated": found["rows_duplicated"],
        "max_trainings_per_night": found["max_trainings_per_night"],
        "registry_matches_serving": matches,
        "predictions_logged_under_served_version": not found["mislogged_days"],
        "alerts_pending": found["alerts_pending"],
        "alerts_delivered_twice": found["alerts_delivered_twice"],
        "alerts_missing_at_receivers": found["alerts_missing_at_receivers"],
        "nights_converged": not found["nights_not_converged"],
        "probe_requests": found["probe_requests"],
        "probe_failures": found["probe_failures"],
    }
    failed = []
    for key in ("rows_lost", "rows_duplicated", "alerts_pending", "alerts_delivered_twice",
                "alerts_missing_at_receivers", "probe_failures"):  # fmt: skip
        if result[key]:
            failed.append(f"{key} = {result[key]}, must be 0")
    if result["max_trainings_per_night"] > 1:
        failed.append(f"max_trainings_per_night = {result['max_trainings_per_night']}, must be at most 1")
    if not matches:
        failed.append(f"registry_matches_serving: {registry}")
    if found["mislogged_days"]:
        failed.append(f"predictions_logged_under_served_version: days {found['mislogged_days']}")
    if found["nights_not_converged"]:
        failed.append(f"nights_converged: ingest did not succeed for {found['nights_not_converged']}")
    if result["probe_requests"] == 0:
        failed.append("probe_requests = 0: the prober never ran")
    return result, failed


def overhead(url: str, nights: list[Night]) -> float | None:
    """Sum of DAG-run time over the sum of task time, over every run of the nights (all tries of each task)."""
    began = min(n.began for n in nights if n.began)
    runs = _rows(url, "SELECT run_id, extract(epoch FROM end_date - start_date) AS s FROM dag_run WHERE "
                      "dag_id = ANY(:d) AND end_date IS NOT NULL AND (queued_at >= :b OR logical_date = ANY(:l))",
                 d=list(DAGS), b=began,
                 l=[dt.datetime.combine(n.night, dt.time(), NY) for n in nights])  # fmt: skip
    ids = [r["run_id"] for r in runs]
    tasks = _rows(
        url,
        "SELECT coalesce(sum(duration), 0) AS s FROM (SELECT duration FROM task_instance WHERE run_id = "
        "ANY(:r) UNION ALL SELECT duration FROM task_instance_history WHERE run_id = ANY(:r)) t",
        r=ids,
    )
    task_s = float(tasks[0]["s"] or 0)
    return round(sum(float(r["s"]) for r in runs) / task_s, 3) if task_s else None


def workers(url: str, nights: list[Night]) -> dict[str, Any]:
    """Which worker ran each task instance of the nights (every try), and on which queue: under CeleryExecutor
    the worker's name (`runtime.worker_hostname`), under LocalExecutor the machine's."""
    began = min(n.began for n in nights if n.began)
    tries = _rows(
        url,
        "SELECT dag_id, run_id, task_id, map_index, try_number, hostname, queue, state FROM ("
        "SELECT dag_id, run_id, task_id, map_index, try_number, hostname, queue, state, start_date FROM task_instance "
        "UNION ALL SELECT dag_id, run_id, task_id, map_index, try_number, hostname, queue, state, start_date "
        "FROM task_instance_history) t WHERE dag_id = ANY(:d) AND start_date >= :b AND hostname <> '' "
        "ORDER BY start_date",
        d=list(DAGS), b=began,
    )  # fmt: skip
    per_worker = Counter(r["hostname"] for r in tries)
    return {"workers": dict(per_worker), "queues": dict(Counter(r["queue"] for r in tries)),
            "task_instances": [dict(r) for r in tries]}  # fmt: skip


def print_table(report: dict[str, Any], failed: list[str]) -> None:
    print(f"\nnightshift nights: {report['nights']} nights, {report['first_night']} … {report['last_night']}")
    header = f"{'night':<11} {'replays':<11} {'ingest':<8} {'train':>5} {'skip':>4} {'versions':<9} " \
             f"{'deploys':<22} {'monitored':>9} {'alerts':>6}  faults"  # fmt: skip
    print(header)
    print("-" * len(header))
    for p in report["per_night"]:
        print(f"{p['night']:<11} {p['replays']:<11} {p['ingest'] or '-':<8} {p['trainings']:>5} "
              f"{p['skipped_trainings']:>4} {','.join(map(str, p['versions'])) or '-':<9} "
              f"{'; '.join(p['deploys']) or '-':<22} {len(p['monitored_days']):>9} {p['alerts']:>6}  "
              f"{', '.join(p['faults']) or '-'}")  # fmt: skip
    print("-" * len(header))
    for key, value in report["invariants"].items():
        print(f"{key:<42} {value}")
    print(f"wall {report['wall_s']:.0f} s, {report['minutes_per_night']} min per night, orchestration overhead "
          f"{report['orchestration_overhead']}; written to {report['path']}")  # fmt: skip
    for failure in failed:
        print(f"INVARIANT FAILED: {failure}")


# -- the command ------------------------------------------------------------------------------------------


def needs_bootstrap(url: str) -> bool:
    from include.ingest.records import published_days
    from include.train.registry import production_version

    return not published_days(url) or production_version(url) is None


@contextlib.contextmanager
def _stack(harness: Harness) -> Iterator[None]:
    from include.ops.runtime import ensure_passwords, supervised_serving

    harness.receivers.start()
    try:
        env = harness.env
        env.update(harness.receivers.connections())
        env.pop("NIGHTSHIFT_SERVING_REPLICAS", None)  # the harness's own one server, on a free port
        serving_settings = load_settings({**env, "NIGHTSHIFT_SERVING_URL": "http://127.0.0.1:0"})
        with supervised_serving(serving_settings, env) as (serving,):
            harness.serving = serving
            env["NIGHTSHIFT_SERVING_URL"] = serving.url
            port = _free_port()
            env.update({"AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                        "AIRFLOW__API__WORKERS": "1",
                        # the triggerer's log server too: beside `make airflow` on one machine, 8794 is taken
                        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port())})  # fmt: skip
            harness.procs = Processes(airflow_processes(env), env, harness.out / "logs")
            try:
                harness.procs.start()
                password = json.loads(ensure_passwords(harness.settings).read_text())["admin"]
                harness.api = Api(env["AIRFLOW__API__BASE_URL"], password)
                harness.procs.probe("scheduler", lambda: scheduler_healthy(harness.api.url))
                _wait_ready(harness)
                yield
            finally:
                if harness.prober:
                    harness.prober.stop()
                harness.procs.stop()
    finally:
        harness.receivers.stop()


def scheduler_healthy(url: str) -> bool | None:
    """The scheduler's liveness, from Airflow's own health endpoint (its heartbeat in the metadata database):
    True or False, or None when the API or Postgres cannot tell."""
    try:
        status = httpx.get(f"{url}/api/v2/monitor/health", timeout=5).json()["scheduler"]["status"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None
    return {"healthy": True, "unhealthy": False}.get(status)


def _wait_ready(harness: Harness) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, NightsError, KeyError):
            health = httpx.get(f"{harness.api.url}/api/v2/monitor/health", timeout=5).json()
            dags = harness.api.call("GET", "/dags", tries=1, params={"dag_id_pattern": "nightshift_"})
            parsed = {d["dag_id"] for d in dags["dags"]}  # the chain's DAGs; others (health, batch) may be there too
            if health["scheduler"]["status"] == "healthy" and set(DAGS) <= parsed:
                print(f"==> Airflow ready on {harness.api.url} (logs in {harness.out / 'logs'})", flush=True)
                return
        time.sleep(3)
    raise NightsError(f"Airflow not ready after {READY_TIMEOUT_S} s; see {harness.out / 'logs'}")


def _unwind_on_signals() -> None:
    """SIGTERM (a CI or pytest timeout, systemd, `kill`) and SIGINT (ignored in a background shell job
    otherwise) unwind like Ctrl-C: the harness stops Airflow, serving and the embedded Postgres it
    started instead of leaving them running."""

    def unwind(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    signal.signal(signal.SIGINT, unwind)


def run_nights(settings: Settings, count: int, faults: list[str], prepare: Callable[[Settings], dict[str, str]],
               last_night: dt.date | None = None, deadline_min: float | None = None) -> int:  # fmt: skip
    from include.deploy.savedmodel import sample_rows
    from include.ops.demo import run_demo
    from include.ops.postgres import embedded_data_dir, stop_embedded
    from include.ops.replay import fixed_clock
    from include.train.registry import production_version

    began = time.monotonic()
    _unwind_on_signals()
    if "postgres" in [f.partition("@")[0] for f in faults] and settings.database_url:
        print("nightshift nights: the postgres fault stops the embedded Postgres; unset DATABASE_URL", file=sys.stderr)
        return 2
    out = settings.local_dir / "nights"
    out.mkdir(parents=True, exist_ok=True)
    try:
        env = prepare(settings)
        url = env["NIGHTSHIFT_DATABASE_URL"]
        if needs_bootstrap(url):
            print("==> nothing published or serving yet: running the demo first (make demo)", flush=True)
            if run_demo(settings, lambda _: env, None, None, keep_postgres=True) != 0:
                print("nightshift nights: the demo failed; see its summary above", file=sys.stderr)
                return 1
        last = last_night or dt.datetime.now(NY).date() - dt.timedelta(days=1)
        first_night = last - dt.timedelta(days=count - 1)
        clock = fixed_clock(settings, url, first_night)  # night 1 replays the day after the published ones
        first_day = dt.date.fromisoformat(clock["NIGHTSHIFT_REPLAY_FIRST_DAY"]) + (
            first_night - dt.date.fromisoformat(clock["NIGHTSHIFT_REPLAY_START"])
        )
        nights = plan_nights(count, faults, last, first_day)
        failpoints = out / "failpoints"
        failpoints.mkdir(exist_ok=True)
        env.update({**clock, "NIGHTSHIFT_SOURCE": "landing", FAILPOINT_DIR: str(failpoints)})
        harness = Harness(settings, env, nights, out,
                          deadline=None if deadline_min is None else began + deadline_min * 60)  # fmt: skip
        per_night: list[dict[str, Any]] = []
        with _stack(harness):
            harness.create_backfill()
            stable = production_version(url)
            rows = sample_rows(load_settings(env), stable["dataset_uri"], 1, seed=3)
            harness.prober = Prober(env["NIGHTSHIFT_SERVING_URL"], settings.model_name, rows)
            harness.prober.start()
            before = night_report(url, harness.startup())
            for night in nights:
                harness.run_night(night)
                per_night.append(night_report(url, night))
                _, failed = invariants(facts(settings, url, nights, per_night, harness.receivers, harness.prober))
                print(f"    {json.dumps(per_night[-1], default=str)}", flush=True)
                for failure in failed:
                    print(f"    invariant failing after night {night.index}: {failure}", flush=True)
            # What the next task would deliver after the last night (a channels fault may be on it).
            subprocess.run([sys.executable, "-c", "from include.core.alerts import deliver_pending; deliver_pending()"],
                           env=env, timeout=300, check=False)  # fmt: skip
            found = facts(settings, url, nights, per_night, harness.receivers, harness.prober)
            result, failed = invariants(found)
            ran = workers(url, nights)
            report = {
                "nights": count, "first_night": nights[0].night.isoformat(), "last_night": nights[-1].night.isoformat(),
                "executor": env["AIRFLOW__CORE__EXECUTOR"], "workers": ran["workers"], "queues": ran["queues"],
                "wall_s": round(time.monotonic() - began, 1),
                "minutes_per_night": round(sum(p["wall_s"] for p in per_night) / 60 / count, 2),
                "orchestration_overhead": overhead(url, nights),
                "faults": [f for n in nights for f in n.fired], "before_first_night": before, "per_night": per_night,
                "invariants": result,
                "registry": found["registry"], "airflow_restarts": dict(harness.procs.restarts),
                "airflow_hung": dict(harness.procs.hung),
                "serving_restarts": harness.serving.restarts, "probe": {k: v for k, v in found.items()
                                                                        if k.startswith("probe_")},
                "failed_invariants": failed, "path": str(out / "report.json"),
                "task_instances": ran["task_instances"],
            }  # fmt: skip
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        print_table(report, failed)
        return 1 if failed else 0
    finally:
        if not settings.database_url:
            stop_embedded(embedded_data_dir(settings.local_dir))
