"""The 3-night harness run on LocalExecutor, then on CeleryExecutor, one after the other: minutes per night.

Each run is `bin/nightshift nights --nights 3 --faults postgres,promote,landing` in a state folder of its own
(`.local/bench/nights-local`, `.local/bench/nights-celery`: its own embedded Postgres, lake, serving and
Airflow), with the CI test's budget (`tests/factories.py`, SMALL_CHAIN). Celery uses Redis database 11 of
`NIGHTSHIFT_REDIS`'s server, emptied first. Run it with nothing else on the machine.

    PYTHONPATH=. .venv/bin/python -m benchmarks.executors      (make bench-executors)

Writes `.local/bench/executors.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAULTS = "postgres,promote,landing"
BROKER_DB = 11


def nights_on(executor: str) -> dict[str, Any]:
    from benchmarks.s3_demo import state_of_its_own
    from tests.factories import SMALL_CHAIN

    local = ROOT / ".local" / "bench" / f"nights-{executor}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    env = state_of_its_own(local, SMALL_CHAIN)
    if executor == "celery":
        import redis

        broker = f"redis://{os.environ.get('NIGHTSHIFT_REDIS', '127.0.0.1:6379')}/{BROKER_DB}"
        with redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=5) as client:
            client.flushdb()  # no task message of an earlier run
        env.update({"NIGHTSHIFT_EXECUTOR": "celery", "NIGHTSHIFT_CELERY_BROKER_URL": broker})
    print(f"==> 3 nights on {executor} in {local}", flush=True)
    with (local / "harness.log").open("w") as log:
        command = [str(ROOT / "bin" / "nightshift"), "nights", "--nights", "3", "--faults", FAULTS, "--deadline", "30"]
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    report = json.loads((local / "nights" / "report.json").read_text())
    return {"exit_status": done.returncode, "executor": report["executor"],
            "nights_s": [p["wall_s"] for p in report["per_night"]], "minutes_per_night": report["minutes_per_night"],
            "failed_invariants": report["failed_invariants"], "workers": report["workers"]}  # fmt: skip


def main() -> int:
    runs = {executor: nights_on(executor) for executor in ("local", "celery")}
    ratio = round(runs["celery"]["minutes_per_night"] / runs["local"]["minutes_per_night"], 3)
    result = {**runs, "celery_over_local": ratio}
    out = ROOT / ".local" / "bench" / "executors.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"minutes per night: LocalExecutor {runs['local']['minutes_per_night']}, CeleryExecutor "
          f"{runs['celery']['minutes_per_night']} ({ratio}x); written to {out}")  # fmt: skip
    return 0 if all(r["exit_status"] == 0 and not r["failed_invariants"] for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
