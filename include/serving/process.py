"""Start and stop the local TF-Serving-compatible server for the commands that need it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from include.core.config import ConfigError, Settings


def is_up(url: str) -> bool:
    """Anything answering TF Serving's model status route (a 404 for an unknown model counts)."""
    try:
        return "error" in httpx.get(f"{url}/v1/models/_health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False


@contextlib.contextmanager
def local_server(settings: Settings, env: dict[str, str] | None = None, timeout_s: float = 90) -> Iterator[str]:
    """Serve `settings.models_config` on `settings.serving_url` for the block's duration; yield its URL.

    Port 0 in the URL means any free port: the server binds it and reports which, and the URL
    yielded has that port. Otherwise, if a server already answers there (a real TF Serving, or one
    started by `bin/nightshift serve`), it is used as it is and left running.
    """
    from include.serving.config import write_models_config

    url = settings.serving_url
    parts = urlsplit(url)
    if parts.port != 0 and is_up(url):
        yield url
        return
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        raise ConfigError(f"NIGHTSHIFT_SERVING_URL={url} does not answer, and a local server can only be started "
                          "on http://127.0.0.1:<port> (port 0: any free one)")  # fmt: skip
    settings.serving_dir.mkdir(parents=True, exist_ok=True)
    if not settings.models_config.exists():
        write_models_config(settings.models_config, [])
    port_file = settings.serving_dir / f".server-{uuid.uuid4().hex[:8]}.port"
    log_file = (settings.serving_dir / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.serving.local_server", "--model_config_file", str(settings.models_config),
         "--rest_api_port", str(parts.port), "--host", parts.hostname, "--port_file", str(port_file)],
        env={**(env or os.environ), "PYTHONPATH": str(settings.home)}, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        served = None
        while served is None or not is_up(served):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local serving process did not come up on {served or url}; see {log_file.name}")
            if served is None and port_file.exists():
                served = f"{parts.scheme}://{parts.hostname}:{int(port_file.read_text())}"
            time.sleep(0.1 if served is None else 0.3)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
        port_file.unlink(missing_ok=True)
