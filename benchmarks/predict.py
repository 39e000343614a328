"""The prediction service under load, with wrk (Debian's; `make bench-predict` installs it when root).

On what `make demo` built (its Postgres, online store and stable version), this starts a private local
serving process and the prediction service as `bin/nightshift predict` would run it, and measures with
`wrk -t2 -c8 --latency`:

* one flight per request, end to end (HTTP, online features, model, log) at concurrency 8;
* 100 flights per request;
* the same single-flight load with the served-prediction log off (what the log costs);
* the SavedModel called in-process on the same rows (the ratio);
* the online-store read alone (`OnlineFeatures.lookup`, Feast's `online_read`, one flight), p50/p99, on Postgres and on
  Redis (`NIGHTSHIFT_BENCH_REDIS`, default database 4 of 127.0.0.1:6379, filled for the purpose).

Each load starts after 50 warm-up requests and 3 s of the same load (the service also warms its online
store and reference tables when it starts).

    PYTHONPATH=. .venv/bin/python -m benchmarks.predict [--seconds 15]

Writes `.local/bench/predict.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serving import percentiles, throughput, timed

CONCURRENCY = 8
WARMUP_S = 3.0  # of wrk at CONCURRENCY before each measured load
FEAST_PUBLISHED_P99_MS = 7.2  # Feast's Python feature server on Redis, from its published benchmark
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return round(float(number) * UNITS[unit], 3)


def wrk(url: str, key: str, flights: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """`wrk --latency` POSTing `flights` in every request; its latency percentiles and requests/s."""
    body = json.dumps({"flights": flights})
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as warm:  # connections, caches
        for _ in range(50):
            warm.post(f"{url}/v1/predict", json={"flights": flights}).raise_for_status()
    script = (
        f"wrk.method = 'POST'\nwrk.body = [==[{body}]==]\n"
        f"wrk.headers['Content-Type'] = 'application/json'\nwrk.headers['Authorization'] = 'Bearer {key}'\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)

    def load(duration: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{duration:.0f}s", "--latency", "--timeout", "10s",
                               "-s", lua.name, f"{url}/v1/predict"], capture_output=True, text=True,
                              timeout=duration + 60, check=True)  # fmt: skip

    try:
        # The first seconds at full concurrency after a start are slower (connection pools grow, code paths
        # run for the first time): they are a warm-up here, as the 50 sequential requests above are.
        load(WARMUP_S)
        before = _batch_gauges(url)
        done = load(seconds)
    finally:
        os.unlink(lua.name)
    out = done.stdout
    print(out, flush=True)
    latency = dict(re.findall(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+(?:us|ms|s))\s*$", out, re.M))
    if len(latency) < 4:
        raise SystemExit(f"wrk's output had no latency distribution:\n{out}\n{done.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    after = _batch_gauges(url)
    batches = after["nightshift_predict_batches_total"] - before["nightshift_predict_batches_total"]
    shared = after["nightshift_predict_batched_requests_total"] - before["nightshift_predict_batched_requests_total"]
    return {
        "requests_per_batch": round(shared / batches, 2) if batches else None,
        "flights_per_request": len(flights), "concurrency": CONCURRENCY, "seconds": seconds,
        "p50_ms": _ms(latency["50"]), "p90_ms": _ms(latency["90"]), "p99_ms": _ms(latency["99"]),
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }  # fmt: skip


def _batch_gauges(url: str) -> dict[str, float]:
    """The service's batch counters: how many requests shared each batch under the load."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ("nightshift_predict_batches_total ", "nightshift_predict_batched_requests_total ")
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


@contextlib.contextmanager
def service(env: dict[str, str], port: int, **settings: str) -> Any:
    """`bin/nightshift predict` on `port`, until the block ends."""
    home = Path(__file__).resolve().parents[1]
    run_env = {**env, "NIGHTSHIFT_PREDICT_PORT": str(port), **settings}
    proc = subprocess.Popen([str(home / "bin" / "nightshift"), "predict"], env=run_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the prediction service did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _redis_read(settings: Any, url: str, day: dt.date, entities: Any) -> dict[str, Any]:
    """The same read on Redis (`NIGHTSHIFT_BENCH_REDIS`, default database 4 of 127.0.0.1:6379), after
    materializing the day's last two days into it."""
    import pandas as pd
    import redis

    from include.core.calendar import end_of_day_utc, local_midnight_utc
    from include.core.config import load_settings
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window
    from include.predict.online import open_online_store

    address = os.environ.get("NIGHTSHIFT_BENCH_REDIS", "127.0.0.1:6379,db=4")
    on_redis = load_settings({**os.environ, "NIGHTSHIFT_DATABASE_URL": url, "NIGHTSHIFT_ONLINE_STORE": "redis",
                              "NIGHTSHIFT_REDIS": address})  # fmt: skip
    try:
        materialize_window(open_store(on_redis), (local_midnight_utc(day) - pd.Timedelta(days=2)).to_pydatetime(),
                           (end_of_day_utc(day) + pd.Timedelta(seconds=1)).to_pydatetime())  # fmt: skip
    except redis.exceptions.ConnectionError as err:
        return {"error": f"no Redis at {address}: {err}"}
    return _online_read(open_online_store(on_redis), entities)


def _online_read(store: Any, entities: Any) -> dict[str, Any]:
    """The service's read alone (`OnlineFeatures.lookup`, resolved once as the service does), p50/p99."""
    from include.predict.online import OnlineFeatures

    features, records = OnlineFeatures(store), entities.to_dict("records")
    return percentiles(timed(lambda: features.lookup([dict(r) for r in records]), 500))


def main(argv: list[str] | None = None) -> int:
    import tensorflow as tf

    from include.contract.inputs import rows_to_arrays, serving_rows
    from include.core.config import load_settings
    from include.ops.postgres import resolve_database_url
    from include.ops.runtime import runtime_env
    from include.predict import keys
    from include.predict.flights import Flight, entity_rows, schedule_requests
    from include.predict.online import lookup, open_online_store
    from include.serving.process import local_server
    from include.serving.state import read_state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench-predict does it as root)")
    base = load_settings()
    url = resolve_database_url(base.database_url, base.local_dir)
    settings = load_settings({**os.environ, "NIGHTSHIFT_DATABASE_URL": url})
    state = read_state(settings)
    if state.stable is None:
        raise SystemExit("no stable version under .local/serving: run `make demo` first")
    from include.core import lake

    days = sorted(p.name for p in (lake.lake_root(settings) / "clean" / "flights").iterdir())
    day = dt.date.fromisoformat(days[-1].removeprefix("date="))
    clean = lake.read_parquet(lake.partition_file(lake.lake_root(settings), "clean", "flights", day))
    flights = schedule_requests(clean, day)
    name = f"bench-{time.time_ns()}"
    key = keys.create_key(url, name, 10_000_000)
    results: dict[str, Any] = {"version": state.stable, "day": day.isoformat(), "cpu_count": os.cpu_count(),
                               "load_generator": subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                                                check=False).stdout.splitlines()[0]}  # fmt: skip
    private = dataclasses.replace(settings, serving_url="http://127.0.0.1:0")
    try:
        with local_server(private) as serving_url:
            env = {**runtime_env(settings, url), "NIGHTSHIFT_SERVING_URL": serving_url, "PYTHONUNBUFFERED": "1"}
            with service(env, _free_port()) as service_url:
                print(f"==> wrk on {service_url}: 1 flight per request, {args.seconds:.0f} s", flush=True)
                results["one_flight"] = wrk(service_url, key, flights[:1], args.seconds)
                print(f"==> wrk: 100 flights per request, {args.seconds:.0f} s", flush=True)
                results["hundred_flights"] = wrk(service_url, key, flights[:100], args.seconds)
            with service(env, _free_port(), NIGHTSHIFT_PREDICT_LOG_SERVED="0") as service_url:
                print("==> wrk: 1 flight per request, served-prediction log off", flush=True)
                results["one_flight_log_off"] = wrk(service_url, key, flights[:1], args.seconds)
    finally:
        keys.revoke_key(url, name)
    # The same rows, in-process: the online store read alone, and the SavedModel alone.
    store = open_online_store(settings)
    entities, _ = entity_rows([Flight(**flights[0])])
    results["online_read_postgres"] = _online_read(store, entities)
    results["online_read_postgres"]["feast_published_redis_p99_ms"] = FEAST_PUBLISHED_P99_MS
    results["online_read_redis"] = _redis_read(settings, url, day, entities)
    frame, _ = lookup(store, entities)
    signature = tf.saved_model.load(str(settings.model_dir / str(state.stable))).signatures["serving_default"]
    arrays = rows_to_arrays(serving_rows(frame))

    def direct() -> Any:
        return next(iter(signature(**{k: tf.constant(v) for k, v in arrays.items()}).values()))

    results["in_process_savedmodel"] = {**percentiles(timed(direct, 500)),
                                        "requests_per_s": throughput(lambda: direct, args.seconds)}  # fmt: skip
    one, off = results["one_flight"], results["one_flight_log_off"]
    results["ratio_to_in_process"] = {
        "p99": round(one["p99_ms"] / results["in_process_savedmodel"]["p99_ms"], 2),
        "throughput": round(one["requests_per_s"] / results["in_process_savedmodel"]["requests_per_s"], 3),
    }
    results["log_cost_share_of_throughput"] = round(1 - one["requests_per_s"] / off["requests_per_s"], 3)
    out = settings.local_dir / "bench" / "predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
