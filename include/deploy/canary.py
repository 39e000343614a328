"""The canary's verdict: the new version against `stable`, on the prediction service's live traffic when there
is enough of it, else on the same real requests replayed to both."""

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
    return verdict(latencies, predictions, errors, {"canary": len(rows), "stable": len(rows)}, policy, (50, 90),
                   {"requests": len(rows), "judged_on": "replay"})  # fmt: skip


def verdict(latencies: dict[str, list[float]], predictions: dict[str, list[float]], errors: dict[str, int],
            counts: dict[str, int], policy: DeployPolicy, judged: tuple[int, ...],
            result: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The canary judged against stable: latency at the `judged` quantiles, error rate, mean prediction shift."""
    for label in ("canary", "stable"):
        for q in (50, 90, 99):  # p99 of ~100 replayed requests is one of the slowest two: judged only live
            result[f"{label}_p{q}_ms"] = float(np.percentile(latencies[label], q)) if latencies[label] else None
        result[f"{label}_error_rate"] = errors[label] / counts[label] if counts[label] else 0.0
        result[f"{label}_mean_prediction"] = float(np.mean(predictions[label])) if predictions[label] else None
    canary_p, stable_p = result["canary_mean_prediction"], result["stable_mean_prediction"]
    result["prediction_shift"] = abs(canary_p - stable_p) if canary_p is not None and stable_p is not None else None
    problems = []
    for q in judged:
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


def live_compare(served: Any, canary: int, stable: int, policy: DeployPolicy) -> dict[str, Any] | None:
    """The canary judged on the prediction service's live traffic (its served-prediction log since the canary
    label moved): None when either arm answered fewer than `canary_min_live` flights. The arms see different
    flights (split by key hash, so alike in distribution); latency is judged at p50 and p99 of each arm's
    serving calls."""
    if served is None:
        return None
    arms = {"canary": served[(served["arm"] == "canary") & (served["model_version"] == canary)],
            "stable": served[(served["arm"] == "stable") & (served["model_version"] == stable)]}  # fmt: skip
    if min(len(a) for a in arms.values()) < policy.canary_min_live:
        return None
    latencies, predictions, errors, counts = {}, {}, {}, {}
    for label, rows in arms.items():
        answered = rows[rows["error"].isna()]
        calls = answered.drop_duplicates("request_id")  # one serving call per request and arm
        latencies[label] = calls["serving_ms"].astype(float).tolist()
        predictions[label] = answered["p_delayed"].astype(float).tolist()
        errors[label] = int(rows["error"].notna().sum())
        counts[label] = len(rows)
    return verdict(
        latencies,
        predictions,
        errors,
        counts,
        policy,
        (50, 99),
        {"judged_on": "live", "canary_flights": counts["canary"], "stable_flights": counts["stable"]},
    )
