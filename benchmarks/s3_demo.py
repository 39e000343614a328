"""`make demo` on an `s3://` lake and on the file lake, one after the other: wall times and summaries.

The S3 endpoint is moto in server mode on a free loopback port (tests/s3_fixtures.py), reached through
an Airflow AWS connection as a real bucket would be. Each run has a state folder of its own under
`.local/bench/s3-demo/` (its own embedded Postgres, Airflow, serving); both use the demo's budget and
seed (`NIGHTSHIFT_NIGHTLY_*`), or what the environment sets.

    PYTHONPATH=. .venv/bin/python -m benchmarks.s3_demo      (make bench-s3; needs `make install-test`)

Writes `.local/bench/s3_demo.json`: the two wall times, their ratio, and whether the summaries are equal
(and where they differ).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONN_ID = "nightshift_lake"


def state_of_its_own(local: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """This environment less the caller's own stack (a test session's database, its Airflow, its settings),
    plus `extra`, in the state folder `local`: what a run in a state of its own starts from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "NIGHTSHIFT_", "DATABASE_URL"))}
    return {**env, **extra, "NIGHTSHIFT_LOCAL_DIR": str(local), "NIGHTSHIFT_HOME": str(ROOT)}


def s3_lake_env(bucket: str, endpoint_url: str) -> dict[str, str]:
    """The demo's environment for an `s3://{bucket}/lake` through the connection `CONN_ID` to `endpoint_url`."""
    from tests.s3_fixtures import connection_env

    return {"NIGHTSHIFT_LAKE": f"s3://{bucket}/lake", "NIGHTSHIFT_LAKE_CONN_ID": CONN_ID,
            **connection_env(CONN_ID, endpoint_url)}  # fmt: skip


def demo_in(local: Path, extra: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
    """`bin/nightshift demo` in the state folder `local` (emptied first): summary, exit status, seconds, output."""
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    env = state_of_its_own(local, {**extra, "NIGHTSHIFT_SERVING_URL": "http://127.0.0.1:0"})
    log = local / "demo.log"
    print(f"==> bin/nightshift demo in {local} (log: {log})", flush=True)
    began = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run([str(ROOT / "bin" / "nightshift"), "demo"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout_s, check=False)  # fmt: skip
    seconds = time.monotonic() - began
    summary_file = local / "demo" / "summary.json"
    output = log.read_text(errors="replace")[-8000:]
    if not summary_file.exists():
        raise RuntimeError(f"the demo in {local} wrote no summary (exit {done.returncode}):\n{output}")
    return {"summary": json.loads(summary_file.read_text()), "returncode": done.returncode, "seconds": seconds,
            "output": output}  # fmt: skip


def comparable(summary: Mapping[str, Any], lake: str) -> dict[str, Any]:
    """The summary less what differs between any two runs (run ids, times, ports), the lake's root named `{lake}`."""
    drop = {"run_ids", "seconds", "path", "seconds_per_day", "serving_url"}

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value.replace(lake, "{lake}") if isinstance(value, str) else value

    return clean(summary)


def differences(left: Any, right: Any, where: str = "") -> list[str]:
    """Where two comparable summaries differ, one line each (empty when equal)."""
    if isinstance(left, dict) and isinstance(right, dict):
        return [d for k in sorted(set(left) | set(right), key=str)
                for d in differences(left.get(k), right.get(k), f"{where}.{k}")]  # fmt: skip
    return [] if left == right else [f"{where.lstrip('.')}: {left!r} != {right!r}"]


def both_lakes(base: Path, extra: Mapping[str, str], timeout_s: float, at_once: bool = False) -> dict[str, Any]:
    """The demo on S3 (a moto server for the run), then on the file lake, or both at once (`at_once`: no
    timing worth comparing, but half the wait); both results, the bucket's keys, and the comparison."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.s3_fixtures import BUCKET, keys, moto_endpoint

    with moto_endpoint() as s3, ThreadPoolExecutor(max_workers=2 if at_once else 1) as pool:
        s3_run = pool.submit(demo_in, base / "s3", {**extra, **s3_lake_env(BUCKET, s3.url)}, timeout_s)
        file_run = pool.submit(demo_in, base / "file", extra, timeout_s)
        on_s3, on_file = s3_run.result(), file_run.result()
        stored = keys(s3.client)
    file_lake = (base / "file" / "lake").resolve().as_uri()
    diff = differences(comparable(on_s3["summary"], f"s3://{BUCKET}/lake"), comparable(on_file["summary"], file_lake))
    timing = {"at_once": at_once, "s3_s": round(on_s3["seconds"], 1), "file_s": round(on_file["seconds"], 1),
              "ratio": round(on_s3["seconds"] / on_file["seconds"], 3), "summaries_equal": not diff,
              "differences": diff,
              "exit_status": {"s3": on_s3["returncode"], "file": on_file["returncode"]}}  # fmt: skip
    print(f"the demo on S3 took {timing['s3_s']} s, on the file lake {timing['file_s']} s ({timing['ratio']}x); "
          f"summaries {'equal' if not diff else 'differ: ' + '; '.join(diff)}", flush=True)  # fmt: skip
    return {"s3": on_s3, "file": on_file, "keys": stored, "timing": timing}


def main() -> int:
    base = ROOT / ".local" / "bench" / "s3-demo"
    result = both_lakes(base, {}, timeout_s=45 * 60)
    out = ROOT / ".local" / "bench" / "s3_demo.json"
    out.write_text(json.dumps(result["timing"], indent=2) + "\n")
    print(f"written to {out}")
    return 0 if result["timing"]["summaries_equal"] and set(result["timing"]["exit_status"].values()) == {0} else 1


if __name__ == "__main__":
    raise SystemExit(main())
