"""The canary's verdict: the new version against `stable` on the same real requests."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from include.core.config import DeployPolicy
from include.deploy.errors import DeployError
from include.serving.client import ServingClient, ServingError

# Fewer requests than this and a latency quantile is a handful of samples: noise, not a verdict.
MIN_CANARY_REQUESTS = 50


def _timed(client: ServingClient, row: dict[str, Any], label: str) -> tuple[float, float | None]:
    """One single-row request: (latency ms, its prediction, or None when it failed)."""
    began = time.perf_counter()
    try:
        prediction: float | None = float(np.ravel(client.predict_rows([row], label=label))[0])
    except ServingError:
        prediction = None
    return (time.perf_counter() - began) * 1000, prediction


def compare(client: ServingClient, rows: list[dict[str, Any]], policy: DeployPolicy) -> dict[str, Any]:
    """Canary against stable on the same requests: latency p50 and p90, error rate, mean prediction shift.

    Requests alternate between the two (each row to both, the first of the pair alternating), so a
    busy spell on the machine falls on both alike. Latency is judged on the median and p90 of the
    answered requests, which a few stalls cannot move, never on a maximum.
    """
    if len(rows) < MIN_CANARY_REQUESTS:
        raise DeployError(f"{len(rows)} canary requests are too few for a latency verdict; send at least "
                          f"{MIN_CANARY_REQUESTS} (NIGHTSHIFT_DEPLOY_CANARY_REQUESTS)")  # fmt: skip
    latencies: dict[str, list[float]] = {"canary": [], "stable": []}
    predictions: dict[str, list[float]] = {"canary": [], "stable": []}
    errors = {"canary": 0, "stable": 0}
    for index, row in enumerate(rows):
        for label in ("canary", "stable") if index % 2 == 0 else ("stable", "canary"):
            ms, prediction = _timed(client, row, label)
            if prediction is None:
                errors[label] += 1
            else:
                latencies[label].append(ms)
                predictions[label].append(prediction)
    result: dict[str, Any] = {"requests": len(rows)}
    for label in ("canary", "stable"):
        for q in (50, 90, 99):  # p99 is recorded, not judged: of ~100 requests it is one of the slowest two
            result[f"{label}_p{q}_ms"] = float(np.percentile(latencies[label], q)) if latencies[label] else None
        result[f"{label}_error_rate"] = errors[label] / len(rows)
        result[f"{label}_mean_prediction"] = float(np.mean(predictions[label])) if predictions[label] else None
    canary_p, stable_p = result["canary_mean_prediction"], result["stable_mean_prediction"]
    result["prediction_shift"] = abs(canary_p - stable_p) if canary_p is not None and stable_p is not None else None
    problems = []
    for q in (50, 90):
        canary_ms, stable_ms = result[f"canary_p{q}_ms"], result[f"stable_p{q}_ms"]
        if canary_ms is None or stable_ms is None:
            continue  # nothing answered: the error rate says so
        limit = result[f"p{q}_limit_ms"] = policy.max_latency_ratio * stable_ms + policy.latency_slack_ms
        if canary_ms > limit:
            problems.append(f"latency p{q} {canary_ms:.1f} ms > {limit:.1f} ms (stable {stable_ms:.1f} ms)")
    if result["canary_error_rate"] > policy.max_error_rate:
        problems.append(f"error rate {result['canary_error_rate']:.1%} > {policy.max_error_rate:.1%}")
    if result["prediction_shift"] is None or result["prediction_shift"] > policy.max_prediction_shift:
        problems.append(f"mean prediction shift {result['prediction_shift']} > {policy.max_prediction_shift}")
    result["problems"] = problems
    return result
