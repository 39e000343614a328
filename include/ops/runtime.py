"""The environment every nightshift process runs with: one Postgres, one Airflow home, one lake.

`runtime_env` is the only place that turns settings into Airflow's `AIRFLOW__*` variables, so the
demo, the full Airflow, the CLI's `airflow …` calls and the tests all agree.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.core.config import Executor, Settings
from include.core.feast import feast_variables
from include.db import sqlalchemy_url

if TYPE_CHECKING:
    from include.serving.process import ServingSupervisor

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def airflow_database_url(database_url: str) -> str:
    """Airflow's metadata database URL: the same Postgres, through psycopg2, with a connect timeout."""
    from sqlalchemy.engine import make_url

    from include.db import CONNECT_TIMEOUT_S

    url = make_url(sqlalchemy_url(database_url, "psycopg2"))
    if "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    return url.render_as_string(hide_password=False)


def airflow_home(settings: Settings) -> Path:
    return settings.local_dir / "airflow"


def runtime_env(settings: Settings, database_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) plus everything Airflow, Feast and nightshift need."""
    env = dict(os.environ if base is None else base)
    executor = Executor.from_env(env)
    home = airflow_home(settings)
    venv_bin = str(Path(sys.executable).parent)
    port = env.get("AIRFLOW__API__PORT", "8080")
    env.update(
        {
            "NIGHTSHIFT_HOME": str(settings.home),
            "NIGHTSHIFT_LOCAL_DIR": str(settings.local_dir),
            "NIGHTSHIFT_DATABASE_URL": database_url,
            "NIGHTSHIFT_LAKE": settings.lake_uri,
            "NIGHTSHIFT_SOURCE": settings.source,
            "PYTHONPATH": os.pathsep.join(p for p in (str(settings.home), env.get("PYTHONPATH", "")) if p),
            "PATH": os.pathsep.join((venv_bin, env.get("PATH", ""))),
            "AIRFLOW_HOME": str(home),
            # Airflow's own connections get a connect timeout too (libpq's connect_timeout, in the URL).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_database_url(database_url),
            # The async engine (asyncpg, whose own connect timeout is 60 s) takes no libpq options.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": sqlalchemy_url(database_url, "asyncpg"),
            "AIRFLOW__CORE__EXECUTOR": executor.airflow_name,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.home / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.home / "plugins"),
            # Users, roles and per-DAG permissions in Postgres (include/core/access.py), not SimpleAuthManager's.
            "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
            "AIRFLOW__FAB__CONFIG_FILE": str(home / "webserver_config.py"),
            # Loopback unless configured otherwise: plain HTTP must not face the network.
            "AIRFLOW__API__HOST": env.get("AIRFLOW__API__HOST", "127.0.0.1"),
            "AIRFLOW__API__PORT": port,
            "AIRFLOW__API__BASE_URL": env.get("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "GX_ANALYTICS_ENABLED": "False",
            "FEAST_USAGE": "False",
            "NO_PROXY": "*",
        }
    )
    env.update(feast_variables(database_url))
    if executor.celery:
        env.update({
            "AIRFLOW__CELERY__BROKER_URL": executor.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_database_url(database_url)}",  # the same Postgres
            "NIGHTSHIFT_TRAINING_QUEUE": env.get("NIGHTSHIFT_TRAINING_QUEUE") or executor.training_queue,
            # Redis hands an unacknowledged task to another worker after this long: longer than the longest
            # task may run (the backtest's 480 min), or a running task would be started twice. A task lost
            # with its worker is Airflow's to find sooner (no heartbeat, then its retry).
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(9 * 3600),
        })  # fmt: skip
    return env


AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HOSTNAME_CALLABLE = "include.ops.runtime.worker_hostname"


def airflow_processes(env: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Every long-running Airflow process of the executor `env` names: its name → (`airflow` arguments,
    environment). The four components, and under CeleryExecutor each Celery worker, which records task
    instances under its own name (`worker_hostname`), so several workers on one machine are told apart."""
    processes = {name: ([name], env) for name in AIRFLOW_COMPONENTS}
    for name, argv in Executor.from_env(env).workers(env).items():
        processes[name] = (argv, {**env, "NIGHTSHIFT_WORKER_NAME": name,
                                  "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE})  # fmt: skip
    return processes


def worker_hostname() -> str:
    """Airflow's `[core] hostname_callable` for a Celery worker's tasks: `<worker>@<host>`."""
    import socket

    name = os.environ.get("NIGHTSHIFT_WORKER_NAME")
    return f"{name}@{socket.getfqdn()}" if name else socket.getfqdn()


def ensure_passwords(settings: Settings) -> Path:
    """The UI users' passwords file (generated once, mode 0600 from its first byte)."""
    from include.ops.auth import ensure_passwords as ensure

    return ensure(airflow_home(settings) / "passwords.json")


# Records and delivers one alert in a child process with the runtime environment: the Airflow
# connections the channels use resolve there (the CLI's own process may not see them).
_SEND_ALERT = (
    "import json, sys; from include.core.alerts import Alert, send; from include.core.config import load_settings; "
    "send(load_settings().require_database_url(), Alert(**json.loads(sys.stdin.read())))"
)


def serving_restarted(settings: Settings, env: dict[str, str] | None = None) -> Callable[[str, str, int], None]:
    """The supervisor's `on_restart`: one warning alert per crash of the local serving process, sent
    with `env` (the environment Airflow's components get), so it reaches the same mail and webhook."""
    import json
    import subprocess

    def alert(url: str, how: str, pid: int) -> None:
        fields = dict(
            kind="serving_restarted", key=f"{settings.model_name}:{url}:pid {pid}", severity="warning",
            title=f"Local serving of {settings.model_name} died ({how}) and was restarted on {url}",
            impact="predictions failed while it was down; it serves models.config again, same URL and labels",
            details=[f"process {pid} {how}", f"log: {settings.serving_dir / 'server.log'}"],
            next_step="read the serving log for why it died; a crash that repeats needs the model or the host fixed",
        )  # fmt: skip
        child = {**(os.environ if env is None else env), "NIGHTSHIFT_DATABASE_URL": settings.require_database_url()}
        done = subprocess.run([sys.executable, "-c", _SEND_ALERT], input=json.dumps(fields), env=child, text=True,
                              cwd=str(settings.home),
                              capture_output=True, timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            print(f"nightshift: the serving_restarted alert could not be recorded: {done.stderr[-500:]}",
                  file=sys.stderr)  # fmt: skip

    return alert


@contextlib.contextmanager
def supervised_serving(settings: Settings, env: dict[str, str] | None = None) -> Iterator[list[ServingSupervisor]]:
    """The local serving processes under `make airflow`, one per replica (`NIGHTSHIFT_SERVING_REPLICAS`, else
    the one at `NIGHTSHIFT_SERVING_URL`), all over the same `models.config`: each restarted with backoff when
    it dies, and on-call told."""
    from include.serving.process import supervised_server

    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(supervised_server(settings, env, serving_restarted(settings, env), url))
               for url in settings.replica_urls]  # fmt: skip
