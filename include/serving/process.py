"""Start and stop the local TF-Serving-compatible server for the commands that need it: the one that
serves `models.config`, and the throwaway sandbox infra validation loads a candidate into first."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from include.core.config import ConfigError, Settings
from include.core.lake import credentials_env

log = logging.getLogger(__name__)


def is_up(url: str) -> bool:
    """Anything answering TF Serving's model status route (a 404 for an unknown model counts)."""
    try:
        return "error" in httpx.get(f"{url}/v1/models/_health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False


@dataclass
class _Served:
    """One local serving process we started: stopped with `_stop`."""

    proc: subprocess.Popen
    url: str
    port_file: Path
    log_file: Any


def _check_local(url: str) -> None:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        raise ConfigError(f"NIGHTSHIFT_SERVING_URL={url} does not answer, and a local server can only be started "
                          "on http://127.0.0.1:<port> (port 0: any free one)")  # fmt: skip


def _start(settings: Settings, env: dict[str, str] | None, port: int, timeout_s: float,
           url: str | None = None) -> _Served:  # fmt: skip
    """Start the local server over `settings.models_config` on `port` (0: any free one) of `url`'s host
    (default: `serving_url`'s), wait until it answers."""
    from include.serving.config import write_models_config

    parts = urlsplit(url or settings.serving_url)
    settings.serving_dir.mkdir(parents=True, exist_ok=True)
    if not settings.models_config.exists():
        write_models_config(settings.models_config, [])
    port_file = settings.serving_dir / f".server-{uuid.uuid4().hex[:8]}.port"
    log_file = (settings.serving_dir / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.serving.local_server", "--model_config_file", str(settings.models_config),
         "--rest_api_port", str(port), "--host", str(parts.hostname), "--port_file", str(port_file)],
        env={**(env or os.environ), **credentials_env(settings), "PYTHONPATH": str(settings.home)},
        stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip  # credentials: an s3:// serving base path is read with the lake's connection
    served = _Served(proc, "", port_file, log_file)
    try:
        deadline = time.monotonic() + timeout_s
        while not served.url or not is_up(served.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local serving process did not come up on {served.url or parts.geturl()}"
                                   f"; see {log_file.name}")  # fmt: skip
            if not served.url and port_file.exists():
                served.url = f"{parts.scheme}://{parts.hostname}:{int(port_file.read_text())}"
            time.sleep(0.1 if not served.url else 0.3)
    except BaseException:
        _stop(served)
        raise
    return served


def _stop(served: _Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait(timeout=20)
    served.log_file.close()
    served.port_file.unlink(missing_ok=True)


def how_it_ended(code: int) -> str:
    """A process's return code in words: "killed by SIGKILL", "exited with code 1"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@contextlib.contextmanager
def local_server(settings: Settings, env: dict[str, str] | None = None, timeout_s: float = 90) -> Iterator[str]:
    """Serve `settings.models_config` on `settings.serving_url` for the block's duration; yield its URL.

    Port 0 in the URL means any free port: the server binds it and reports which, and the URL
    yielded has that port. Otherwise, if a server already answers there (a real TF Serving, or one
    started by `bin/nightshift serve`), it is used as it is and left running.
    """
    url = settings.serving_url
    if urlsplit(url).port != 0 and is_up(url):
        yield url
        return
    _check_local(url)
    served = _start(settings, env, int(urlsplit(url).port or 0), timeout_s)
    try:
        yield served.url
    finally:
        _stop(served)


@dataclass
class ServingSupervisor:
    """The local serving process, restarted on the same port whenever it exits, with backoff.

    A restart waits `backoff_s`, doubled after each failed start up to `max_backoff_s`, and reset once a
    restarted server has answered. `on_restart(url, how, pid)` is told after each successful restart.
    """

    settings: Settings
    env: dict[str, str] | None = None
    on_restart: Callable[[str, str, int], None] | None = None
    listen: str = ""  # the URL to serve on; default `serving_url` (a replica's, when there are several)
    timeout_s: float = 90
    poll_s: float = 0.5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    url: str = ""
    restarts: int = 0
    _served: _Served | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int | None:
        return self._served.proc.pid if self._served else None

    def start(self) -> str:
        listen = self.listen or self.settings.serving_url
        _check_local(listen)
        self._served = _start(self.settings, self.env, int(urlsplit(listen).port or 0), self.timeout_s, listen)
        self.url = self._served.url
        self._thread = threading.Thread(target=self._watch, name="serving-supervisor", daemon=True)
        self._thread.start()
        return self.url

    def _watch(self) -> None:
        port = int(urlsplit(self.url).port or 0)  # the port it got first: clients keep their URL
        while not self._stopping.wait(self.poll_s):
            served = self._served
            code = served.proc.poll() if served else None
            if served is None or code is None:
                continue
            how, pid = how_it_ended(code), served.proc.pid
            log.error("the local serving process (pid %d) %s; restarting it on %s", pid, how, self.url)
            served.log_file.close()
            served.port_file.unlink(missing_ok=True)
            delay = self.backoff_s
            while not self._stopping.wait(delay):
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self._served = _start(self.settings, self.env, port, self.timeout_s, self.url)
                    break
                except (RuntimeError, OSError) as err:
                    log.error("restarting the local serving process failed (%s); next try in %.0f s", err, delay)
                    delay = min(delay * 2, self.max_backoff_s)
            else:
                return
            self.restarts += 1
            log.warning("the local serving process is back on %s (pid %d)", self.url, self._served.proc.pid)
            if self.on_restart is not None:
                try:
                    self.on_restart(self.url, how, pid)
                except Exception:  # the alert's failure must not stop the supervision
                    log.exception("telling on-call about the serving restart failed")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 30)
        with self._lock:
            if self._served is not None:
                _stop(self._served)
                self._served = None


@contextlib.contextmanager
def supervised_server(settings: Settings, env: dict[str, str] | None = None,
                      on_restart: Callable[[str, str, int], None] | None = None, listen: str = "",
                      **options: float) -> Iterator[ServingSupervisor]:  # fmt: skip
    """`local_server` on `listen` (default `serving_url`), restarted whenever it exits; yields the
    supervisor (its `url`, `pid`, `restarts`).

    A server that already answers on a fixed port is not ours to supervise: it is used as it is
    (`supervisor.pid` is None then).
    """
    url = listen or settings.serving_url
    if urlsplit(url).port != 0 and is_up(url):
        yield ServingSupervisor(settings, env, url=url)
        return
    supervisor = ServingSupervisor(settings, env, on_restart, url, **options)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


# -- the infra validation sandbox ------------------------------------------------------------------

# The sandbox gets no secret: only what Python and TensorFlow need to start. No accelerator either:
# validation is about loading and answering, and the offline predictions it is compared with run on CPU.
SANDBOX_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")


class SandboxUnavailable(RuntimeError):
    """The sandbox server itself did not come up (before any candidate was loaded): not the model's fault."""


@dataclass
class Sandbox:
    """A local server on 127.0.0.1:<a free port>, over its own temporary serving dir, that holds a copy of
    one version of one model and nothing else; killed by a watchdog at `deadline` whatever it is doing."""

    url: str
    model: str
    version: int
    timeout_s: float
    config_file: Path
    base_path: Path
    log_path: Path
    process: subprocess.Popen
    deadline: float
    killed_by_watchdog: threading.Event = field(default_factory=threading.Event)

    def load(self) -> None:
        """Ask the (so far empty) server to load the candidate: the second step, so a crash here is the model's."""
        from include.serving.config import ModelEntry, write_models_config

        write_models_config(self.config_file, [ModelEntry(self.model, str(self.base_path), [self.version], {})])

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def exited(self) -> str | None:
        """None while it runs; else how it ended ("killed by SIGABRT", "exited with code 1", "hung: …")."""
        code = self.process.poll()
        if code is None:
            return None
        if self.killed_by_watchdog.is_set():
            return f"hung: no answer within the sandbox's {self.timeout_s:.0f} s hard timeout, so it was killed"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""


def _sandbox_env(settings: Settings) -> dict[str, str]:
    env = {k: os.environ[k] for k in SANDBOX_ENV_KEYS if k in os.environ}
    return env | {"PYTHONPATH": str(settings.home), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def sandbox_server(settings: Settings, version: int, timeout_s: float) -> Iterator[Sandbox]:
    """Start a sandbox for `settings.model_dir/<version>` (copied, so it cannot touch the pushed folder).

    It starts with an empty `models.config` and is up before `Sandbox.load()` adds the candidate, so a
    server that does not start (`SandboxUnavailable`) is told apart from a model that crashes or hangs
    it. It is always the local server, even where production runs a real TF Serving: the sandbox
    needs no cluster and no image, and it loads the SavedModel with TensorFlow's own loader.
    """
    from include.serving.config import write_models_config

    source = settings.model_dir / str(version)
    with tempfile.TemporaryDirectory(prefix="nightshift-sandbox-") as tmp:
        root = Path(tmp)
        base = root / settings.model_name
        shutil.copytree(source, base / str(version))
        config_file, port_file, log_path = root / "models.config", root / "server.port", root / "server.log"
        write_models_config(config_file, [])
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "include.serving.local_server", "--model_config_file", str(config_file),
                 "--rest_api_port", "0", "--host", "127.0.0.1", "--port_file", str(port_file)],
                env=_sandbox_env(settings), cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        box = Sandbox("", settings.model_name, version, timeout_s, config_file, base, log_path, proc,
                      time.monotonic() + timeout_s)  # fmt: skip

        def kill() -> None:
            if proc.poll() is None:
                box.killed_by_watchdog.set()
                proc.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            while not box.url or not is_up(box.url):
                if box.exited() or box.remaining() <= 0:
                    why = box.exited() or f"no answer within {timeout_s:.0f} s"
                    raise SandboxUnavailable(f"the sandbox serving process did not start ({why}); its log ends: "
                                             f"{box.log_tail(300)!r}")  # fmt: skip
                if not box.url and port_file.exists():
                    box.url = f"http://127.0.0.1:{int(port_file.read_text())}"
                time.sleep(0.1 if not box.url else 0.3)
            yield box
        finally:
            watchdog.cancel()
            proc.kill()  # nothing to drain: the sandbox's only client is the validation that is done with it
            proc.wait(timeout=20)
