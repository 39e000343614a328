"""How a container of docker/airflow.Dockerfile runs Airflow: `nightshift component NAME` puts one component
in place of itself, in the environment `bin/nightshift airflow` gives all four (docker/compose.yaml)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.factories import unused_port


def test_a_component_runs_in_nightshifts_environment_against_the_shared_postgres(db_url, tmp_path) -> None:
    port = unused_port()
    env = {**os.environ, "DATABASE_URL": db_url, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    log = tmp_path / "api-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "include.ops.cli", "component", "api-server"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, version = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"http://127.0.0.1:{port}/api/v2/version", timeout=5)
                if response.status_code == 200:
                    version = response.json()["version"]
                    break
            time.sleep(1)
        assert version == "3.3.2", log.read_text()[-3000:]
        # The component replaced the CLI's process (exec), so stopping that pid stops Airflow's api-server.
        assert "airflow api-server (DATABASE_URL" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/v2/version", timeout=2)


def test_a_component_without_a_shared_postgres_is_a_configuration_error() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NIGHTSHIFT_DATABASE_URL")}
    done = subprocess.run([sys.executable, "-m", "include.ops.cli", "component", "scheduler"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "configuration error: nightshift component runs against a shared Postgres: set DATABASE_URL" in done.stderr
