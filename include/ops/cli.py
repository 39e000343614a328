"""`bin/nightshift`: set up and run nightshift on one Postgres (DATABASE_URL or embedded).

Commands: db start|stop|url · prepare · demo · backtest · airflow · nights · serve · predict · predict-keys
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from include.core.access import USERS
from include.core.calendar import LOCAL_TZ
from include.core.config import ConfigError, Executor, Settings, load_settings
from include.ops.nights import FAULTS
from include.ops.postgres import embedded_data_dir, resolve_database_url, stop_embedded
from include.ops.runtime import (
    AIRFLOW_COMPONENTS,
    airflow_processes,
    ensure_passwords,
    runtime_env,
    supervised_serving,
)
from include.train.backtest import DEFAULT_ENDS, parse_ends

log = logging.getLogger("nightshift")


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def prepare(settings: Settings) -> dict[str, str]:
    """Postgres up, every schema migrated, settings imported, Feast applied; returns the env."""
    from include.db.migrations import upgrade
    from include.ops.airflow_settings import import_settings

    started = time.monotonic()
    where = "DATABASE_URL" if settings.database_url else f"embedded Postgres in {embedded_data_dir(settings.local_dir)}"
    step(f"Postgres: {where}")
    url = resolve_database_url(settings.database_url, settings.local_dir)
    env = runtime_env(settings, url)
    step("migrating nightshift's schema (alembic)")
    upgrade(url)
    step("migrating Airflow's metadata database")
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    step("users and roles (FAB auth manager; include/core/access.py)")
    subprocess.run([sys.executable, "-m", "include.ops.auth", str(ensure_passwords(settings))], env=env, check=True,
                   timeout=300)  # fmt: skip
    step("importing airflow_settings.yaml (connections, variables, pools)")
    counts = import_settings(settings.home / "airflow_settings.yaml", env)
    print(f"    {counts}")
    if not settings.models_config.exists():  # TF Serving's replicas start on it, before any deploy
        from include.serving.config import write_models_config

        step(f"an empty models.config in {settings.serving_dir}")
        settings.serving_dir.mkdir(parents=True, exist_ok=True)
        write_models_config(settings.models_config, [])
    step("feast apply")
    subprocess.run(
        ["feast", "-c", str(settings.feast_repo), "apply", "--skip-source-validation"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"    ready in {time.monotonic() - started:.1f} s")
    return env


def run_airflow(settings: Settings) -> int:
    """The full Airflow (api-server, scheduler, dag-processor, triggerer), local serving and the prediction
    service, until Ctrl-C.

    Serving is supervised: if the local serving process dies it is restarted on the same port, and an
    alert says so; if an Airflow process exits, everything stops.
    """
    env = prepare(settings)
    clock = with_replay_clock(settings, env)
    if clock:
        start, first = clock["NIGHTSHIFT_REPLAY_START"], clock["NIGHTSHIFT_REPLAY_FIRST_DAY"]
        step(f"replay clock: the night of {start} replays {first}, each later night the next day")
    passwords = ensure_passwords(settings)
    users = ", ".join(f"{user} ({'/'.join(roles)})" for user, roles in USERS.items())
    step(f"UI on {env['AIRFLOW__API__BASE_URL']} — users {users}; passwords in {passwords}")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    serving_settings = load_settings(env)
    try:
        with supervised_serving(serving_settings, env) as replicas:
            for serving in replicas:
                watched = "supervised" if serving.pid else "already answering, not supervised"
                step(f"TF Serving REST API (local, {watched}) on {serving.url}")
            processes = airflow_processes(env)
            step(f"Airflow with {env['AIRFLOW__CORE__EXECUTOR']}: {', '.join(processes)}")
            procs = [subprocess.Popen(["airflow", *argv], env=penv) for argv, penv in processes.values()]
            procs.append(subprocess.Popen([sys.executable, "-m", "include.ops.cli", "predict"], env=env))
            try:
                while not stopping and all(p.poll() is None for p in procs):
                    time.sleep(1)
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    p.wait(timeout=60)
    finally:
        if not settings.database_url:
            stop_embedded(embedded_data_dir(settings.local_dir))
    return 0 if stopping else 1


def with_replay_clock(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """Add the replay clock (fixed on first use, in a file every component shares) to `env`; returns it."""
    from include.ops.replay import replay_clock

    clock = replay_clock(settings, env["NIGHTSHIFT_DATABASE_URL"], dt.datetime.now(ZoneInfo(LOCAL_TZ)).date())
    env.update(clock)
    return clock


def run_component(settings: Settings, component: str) -> int:
    """One Airflow component in the environment `bin/nightshift airflow` gives all four, in place of this
    process: how a container of docker/airflow.Dockerfile runs each (docker/compose.yaml). `prepare`
    must have run once against the same DATABASE_URL and NIGHTSHIFT_LOCAL_DIR (compose's init service)."""
    if not settings.database_url:
        raise ConfigError("nightshift component runs against a shared Postgres: set DATABASE_URL")
    env = runtime_env(settings, resolve_database_url(settings.database_url, settings.local_dir))
    with_replay_clock(settings, env)
    processes = airflow_processes(env)
    if component not in processes:
        raise ConfigError(f"nightshift component {component}: a Celery worker runs only with "
                          f"NIGHTSHIFT_EXECUTOR=celery (this environment runs {env['AIRFLOW__CORE__EXECUTOR']}: "
                          f"{', '.join(processes)})")  # fmt: skip
    argv, env = processes[component]
    step(f"airflow {' '.join(argv)} (DATABASE_URL, AIRFLOW_HOME {env['AIRFLOW_HOME']})")
    sys.stdout.flush()
    os.execvpe("airflow", ["airflow", *argv], env)
    return 1  # not reached: exec replaces this process


def run_local_serving(settings: Settings, port: int) -> int:
    """TF Serving's REST API over `models.config` under NIGHTSHIFT_SERVING_DIR, until Ctrl-C."""
    from include.serving.config import write_models_config
    from include.serving.local_server import main as serve

    config = settings.models_config
    config.parent.mkdir(parents=True, exist_ok=True)
    if not config.exists():
        write_models_config(config, [])
    step(f"local TF Serving REST API on http://127.0.0.1:{port}/v1/models/… (config {config})")
    serve(["--model_config_file", str(config), "--rest_api_port", str(port)])
    return 0


def _runtime_url(settings: Settings) -> Settings:
    """The settings with the database URL resolved (DATABASE_URL, else the embedded Postgres, started)."""
    url = resolve_database_url(settings.database_url, settings.local_dir)
    return load_settings({**os.environ, "NIGHTSHIFT_DATABASE_URL": url})


def run_predict(settings: Settings) -> int:
    """The prediction service (include/predict/app.py) until Ctrl-C."""
    from include.core.config import PredictService
    from include.predict.app import serve

    config = PredictService.from_env()
    step(f"prediction service on http://{config.host}:{config.port}/v1/predict (serving {settings.serving_url})")
    serve(_runtime_url(settings), config)
    return 0


def predict_keys(settings: Settings, action: str, name: str | None, rate: int | None) -> int:
    from include.core.config import PredictService
    from include.predict import keys

    url = _runtime_url(settings).require_database_url()
    if action == "list":
        for row in keys.list_keys(url):
            state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "live"
            print(f"{row['name']}\t{row['prefix']}…\t{row['requests_per_minute']}/min\t{state}")
        return 0
    if not name:
        print(f"nightshift predict-keys {action}: give the key's name", file=sys.stderr)
        return 2
    try:
        if action == "create":
            key = keys.create_key(url, name, rate or PredictService.from_env().requests_per_minute)
            print(key)  # shown once; only its hash is stored
            print(f"key {name!r} created; it is shown only now", file=sys.stderr)
            return 0
    except keys.ApiKeyError as err:
        print(f"nightshift predict-keys: {err}", file=sys.stderr)
        return 1
    if keys.revoke_key(url, name):
        print(f"key {name!r} revoked")
        return 0
    print(f"nightshift predict-keys: no live key named {name!r}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nightshift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="embedded Postgres")
    db.add_argument("action", choices=["start", "stop", "url"])
    sub.add_parser("prepare", help="migrate all schemas, import airflow_settings.yaml, feast apply")
    demo = sub.add_parser("demo", help="set up, run the pipeline, print and write the summary")
    demo.add_argument("--start", help="first day (default NIGHTSHIFT_BOOTSTRAP_START)")
    demo.add_argument("--end", help="last day (default NIGHTSHIFT_BOOTSTRAP_END)")
    demo.add_argument("--keep-postgres", action="store_true", help="leave the embedded Postgres running")
    backtest = sub.add_parser("backtest", help="the rolling backtest over test weeks across 2013 (make backtest)")
    backtest.add_argument("--ends", default=",".join(d.isoformat() for d in DEFAULT_ENDS),
                          help="the test weeks' last days, comma-separated")  # fmt: skip
    backtest.add_argument("--out", type=Path, help="report folder (default: NIGHTSHIFT_LOCAL_DIR)")
    backtest.add_argument("--keep-postgres", action="store_true", help="leave the embedded Postgres running")
    sub.add_parser("airflow", help="run the full Airflow with the UI on :8080")
    component = sub.add_parser("component", help="one Airflow component in nightshift's environment (containers)")
    component.add_argument("name", choices=(*AIRFLOW_COMPONENTS, *Executor("celery").workers({})))
    nights = sub.add_parser("nights", help="N nights of the chain under the real scheduler, with faults (make nights)")
    nights.add_argument("--nights", type=int, default=14, help="how many consecutive nights, ending yesterday")
    nights.add_argument("--faults", default="", help=f"comma-separated, night by night, or name@N: {', '.join(FAULTS)}")
    nights.add_argument("--last-night", type=dt.date.fromisoformat, help="the last night (default: yesterday)")
    nights.add_argument(
        "--deadline",
        type=float,
        metavar="MINUTES",
        help="give up after this many minutes in all, saying what Airflow was still busy with",
    )
    serve = sub.add_parser("serve", help="the local TF-Serving-compatible REST server on .local/serving")
    serve.add_argument("--port", type=int, default=8501)
    sub.add_parser("predict", help="the prediction service for callers (NIGHTSHIFT_PREDICT_HOST/PORT, default :8600)")
    keys = sub.add_parser("predict-keys", help="API keys of the prediction service")
    keys.add_argument("action", choices=["create", "revoke", "list"])
    keys.add_argument("name", nargs="?", help="the key's name (create, revoke)")
    keys.add_argument("--rate", type=int, help="requests a minute (default NIGHTSHIFT_PREDICT_REQUESTS_PER_MINUTE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings()
        if args.command == "db":
            data_dir = embedded_data_dir(settings.local_dir)
            if args.action == "stop":
                print("stopped" if stop_embedded(data_dir) else "not running")
            else:
                print(resolve_database_url(settings.database_url, settings.local_dir))
            return 0
        if args.command == "prepare":
            prepare(settings)
            return 0
        if args.command == "demo":
            from include.ops.demo import run_demo

            return run_demo(settings, prepare, args.start, args.end, keep_postgres=args.keep_postgres)
        if args.command == "backtest":
            from include.ops.backtest import run_backtest

            out = args.out or settings.local_dir
            return run_backtest(settings, prepare, parse_ends(args.ends), out, keep_postgres=args.keep_postgres)
        if args.command == "airflow":
            return run_airflow(settings)
        if args.command == "component":
            return run_component(settings, args.name)
        if args.command == "nights":
            from include.ops.nights import NightsError, run_nights

            faults = [f.strip() for f in args.faults.split(",") if f.strip()]
            try:
                return run_nights(settings, args.nights, faults, prepare, args.last_night, args.deadline)
            except NightsError as err:
                print(f"nightshift nights: {err}", file=sys.stderr)
                return 1
        if args.command == "serve":
            return run_local_serving(settings, args.port)
        if args.command == "predict":
            return run_predict(settings)
        if args.command == "predict-keys":
            return predict_keys(settings, args.action, args.name, args.rate)
    except ConfigError as err:
        print(f"nightshift: configuration error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"nightshift: `{' '.join(map(str, err.cmd))}` failed with exit code {err.returncode}", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
