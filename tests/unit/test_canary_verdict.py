"""The canary's verdict (`deploy.canary.compare`) on stub servers of known latency: a slow canary
always fails it, an equally fast one passes it whatever a few stalls or a busy spell do."""

from __future__ import annotations

import dataclasses
import random
import time

import pytest

from include.core.config import DeployPolicy
from include.deploy.canary import MIN_CANARY_REQUESTS, compare
from include.deploy.errors import DeployError
from include.serving.client import ServingError

ROWS = [{"row": i} for i in range(DeployPolicy().canary_requests)]


@dataclasses.dataclass
class StubServing:
    """Answers `predict_rows` for the labels like a server whose latency per request is `delay_s(label, call)`."""

    delay_s: object
    prediction: dict[str, float] = dataclasses.field(default_factory=lambda: {"canary": 0.3, "stable": 0.3})
    fails: set[tuple[str, int]] = dataclasses.field(default_factory=set)  # (label, nth request to it) that error
    calls: list[str] = dataclasses.field(default_factory=list)

    def predict_rows(self, rows: list[dict], version: int | None = None, label: str | None = None) -> list:
        nth = self.calls.count(label)
        self.calls.append(label)
        time.sleep(self.delay_s(label, len(self.calls) - 1))
        if (label, nth) in self.fails:
            raise ServingError("Servable not available", 503)
        return [[self.prediction[label]]]


def test_a_canary_slower_on_every_request_fails_the_latency_check() -> None:
    slow = StubServing(lambda label, _: 0.040 if label == "canary" else 0.0)  # past the 25 ms slack
    result = compare(slow, ROWS[:MIN_CANARY_REQUESTS], DeployPolicy())
    assert result["canary_p50_ms"] >= 40
    assert any(p.startswith("latency p50") for p in result["problems"]), result["problems"]
    assert any(p.startswith("latency p90") for p in result["problems"]), result["problems"]
    assert result["requests"] == MIN_CANARY_REQUESTS


def test_equal_latency_with_jitter_and_a_few_stalls_passes() -> None:
    """Both ~1–3 ms with random jitter; the canary also meets three 80 ms stalls (a busy neighbour,
    a GC pause). Of 100 requests that is the old p99 — the verdict must not hang on it."""
    rng = random.Random(7)
    stalls = {10, 40, 70}
    canary_calls = iter(range(len(ROWS)))

    def delay(label: str, _: int) -> float:
        jitter = 0.001 + rng.uniform(0, 0.002)
        return jitter + (0.080 if label == "canary" and next(canary_calls) in stalls else 0.0)

    result = compare(StubServing(delay), ROWS, DeployPolicy())
    assert result["problems"] == []
    assert result["canary_p99_ms"] > 70  # the stalls were there, and are recorded
    assert result["canary_error_rate"] == 0.0
    assert result["prediction_shift"] == 0.0


def test_a_busy_spell_during_the_comparison_falls_on_both_versions() -> None:
    """The first half of all requests is slow (the machine is busy), the second fast. Sent one version
    after the other, the canary would take all of the slow half."""
    total = 2 * MIN_CANARY_REQUESTS
    stub = StubServing(lambda _, call: 0.030 if call < total // 2 else 0.0005)
    result = compare(stub, ROWS[:MIN_CANARY_REQUESTS], DeployPolicy())
    assert result["problems"] == []
    assert stub.calls[:4] == ["canary", "stable", "stable", "canary"]  # interleaved, first of a pair alternating


def test_errors_and_shifted_predictions_still_fail_the_canary() -> None:
    stub = StubServing(lambda *_: 0.0, prediction={"canary": 0.9, "stable": 0.3}, fails={("canary", 3), ("canary", 5)})
    result = compare(stub, ROWS, DeployPolicy())
    assert result["canary_error_rate"] == pytest.approx(0.02)
    assert result["stable_error_rate"] == 0.0
    assert result["prediction_shift"] == pytest.approx(0.6)
    assert [p.split(" ")[0] for p in result["problems"]] == ["error", "mean"]


def test_too_few_requests_give_no_verdict() -> None:
    with pytest.raises(DeployError, match=f"too few for a latency verdict; send at least {MIN_CANARY_REQUESTS}"):
        compare(StubServing(lambda *_: 0.0), ROWS[:20], DeployPolicy())
