"""Latency and throughput of the local TF-Serving-compatible server, next to a direct in-process call.

Serves the stable version `make demo` deployed (from `.local/serving`), over real rows the deploy
recorded for infra validation, and measures:

* single-row predict p50/p99 (REST, row format) vs the SavedModel's signature called in-process;
* batch-100 predict p50/p99, both ways;
* requests/s at concurrency 8 (single-row requests from 8 threads), both ways.

    PYTHONPATH=. .venv/bin/python -m benchmarks.serving [--requests 500] [--seconds 10]

Writes `.local/bench/serving.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CONCURRENCY = 8


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(samples_ms, 50)), 3),
            "p99_ms": round(float(np.percentile(samples_ms, 99)), 3), "n": len(samples_ms)}  # fmt: skip


def timed(call: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def throughput(make_call: Callable[[], Callable[[], Any]], seconds: float) -> float:
    """Calls/s from CONCURRENCY threads, each with its own `make_call()` (its own HTTP connection)."""
    stop = time.monotonic() + seconds
    counts = [0] * CONCURRENCY

    def worker(index: int) -> None:
        call = make_call()
        while time.monotonic() < stop:
            call()
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(sum(counts) / seconds, 1)


def main(argv: list[str] | None = None) -> int:
    import dataclasses

    import tensorflow as tf

    from include.contract.inputs import rows_to_arrays
    from include.core.config import load_settings
    from include.serving.client import ServingClient
    from include.serving.process import local_server
    from include.serving.state import read_state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    state = read_state(settings)
    if state.stable is None:
        raise SystemExit("no stable version under .local/serving: run `make demo` first")
    lake = Path(settings.lake_uri.removeprefix("file://"))
    requests_file = lake / "deployments" / settings.model_name / str(state.stable) / "requests.json"
    rows = json.loads(requests_file.read_text())["rows"]
    batch = (rows * (100 // len(rows) + 1))[:100]
    signature = tf.saved_model.load(str(settings.model_dir / str(state.stable))).signatures["serving_default"]

    def direct(selected: list[dict[str, Any]]) -> Callable[[], Any]:
        """What an in-process caller does with the same rows: build tensors, call, read the output."""
        return lambda: next(
            iter(signature(**{k: tf.constant(v) for k, v in rows_to_arrays(selected).items()}).values())
        )

    # A private server on a port it binds itself, so a running `bin/nightshift serve` is not disturbed.
    private = dataclasses.replace(settings, serving_url="http://127.0.0.1:0")
    results: dict[str, Any] = {"version": state.stable, "cpu_count": os.cpu_count(), "concurrency": CONCURRENCY}
    with (
        local_server(private) as url,
        ServingClient(url, settings.model_name, retries=0) as client,
        contextlib.ExitStack() as per_thread,
    ):

        def rest(selected: list[dict[str, Any]], c: ServingClient = client) -> Callable[[], Any]:
            return lambda: c.predict_rows(selected, version=state.stable)

        def rest_on_own_connection() -> Callable[[], Any]:
            return rest(rows[:1], per_thread.enter_context(ServingClient(url, settings.model_name)))

        results["single_row"] = {"rest": percentiles(timed(rest(rows[:1]), args.requests)),
                                 "direct": percentiles(timed(direct(rows[:1]), args.requests))}  # fmt: skip
        results["batch_100"] = {"rest": percentiles(timed(rest(batch), args.requests // 5)),
                                "direct": percentiles(timed(direct(batch), args.requests // 5))}  # fmt: skip
        results["requests_per_s"] = {
            "rest": throughput(rest_on_own_connection, args.seconds),
            "direct": throughput(lambda: direct(rows[:1]), args.seconds),
        }
    single = results["single_row"]
    results["rest_overhead_p50_ms"] = round(single["rest"]["p50_ms"] - single["direct"]["p50_ms"], 3)
    out = settings.local_dir / "bench" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
