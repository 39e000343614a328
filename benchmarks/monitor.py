"""Evidently report time against rows, with the model's 27 features, the label and the prediction.

Rows are resampled from the monitoring reference `make demo`'s training run saved (real test
days with the model's predictions); the current data is the same resample with the weather shifted,
so drift is found. Times `evidently_report` (data drift + prediction drift + classification
quality, the monitor DAG's report) and `save_html`.

    PYTHONPATH=. .venv/bin/python -m benchmarks.monitor [--sizes 1000 10000 100000 1000000]

Writes `.local/bench/monitor.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    from include.contract.features import MODEL_FEATURES
    from include.core.config import MonitorPolicy, load_settings
    from include.monitor.drift import drift_thresholds, evidently_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    args = parser.parse_args(argv)
    settings = load_settings()
    lake = Path(settings.lake_uri.removeprefix("file://"))
    found = sorted(lake.glob("models/*/reference.parquet"))
    if not found:
        raise SystemExit("no monitoring reference in the lake: run `make demo` first")
    source = pd.read_parquet(found[-1])
    policy = MonitorPolicy.from_env()
    results = []
    for size in args.sizes:
        reference = source.sample(n=size, replace=True, random_state=1).reset_index(drop=True)
        current = source.sample(n=size, replace=True, random_state=2).reset_index(drop=True)
        current["temp"] = current["temp"] + 15.0
        began = time.perf_counter()
        snapshot = evidently_report(reference, current, policy, drift_thresholds(reference, policy))
        run_s = time.perf_counter() - began
        began = time.perf_counter()
        snapshot.save_html(str(settings.local_dir / "bench" / "evidently.html"))
        html_s = time.perf_counter() - began
        results.append({"rows": size, "report_s": round(run_s, 2), "save_html_s": round(html_s, 2)})
        print(json.dumps(results[-1]), flush=True)
    out = settings.local_dir / "bench" / "monitor.json"
    out.write_text(json.dumps({"features": len(MODEL_FEATURES), "results": results}, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
