"""Judging one day against a version's reference: Evidently's report, and drift limits calibrated on
the reference's own days (one day of weather never looks like a week of it)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from include.contract.features import LABEL_KEY, MODEL_FEATURES, SCHEDULE_CATEGORICAL
from include.core.config import MonitorPolicy

PREDICTION = "prediction"


def empty_inputs(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Model inputs with no value at all on the day (or in the reference): no distribution to compare.

    Evidently refuses such a column; for on-call it is the worst drift there is (an upstream feed
    or the history features are missing), so it is reported as drifted rather than failing the day.
    """
    return [f for f in MODEL_FEATURES if current[f].isna().all() or reference[f].isna().all()]


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame, policy: MonitorPolicy,
                     thresholds: dict[str, float]):  # fmt: skip
    """Data drift of every model input with values, prediction drift and classification quality, in one report.

    `thresholds` (from `drift_thresholds`) are each column's drift limit, so the report's
    "Detected" verdicts are the ones the monitor alerts on."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset

    numeric = [f for f in MODEL_FEATURES if f not in SCHEDULE_CATEGORICAL]
    definition = DataDefinition(
        numerical_columns=[*numeric, PREDICTION], categorical_columns=SCHEDULE_CATEGORICAL,
        classification=[BinaryClassification(target=LABEL_KEY, prediction_probas=PREDICTION)],
    )  # fmt: skip
    columns = [*MODEL_FEATURES, LABEL_KEY, PREDICTION]

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        frame[LABEL_KEY] = frame[LABEL_KEY].astype(int)
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report(
        [
            DataDriftPreset(columns=[f for f in MODEL_FEATURES if f not in empty_inputs(reference, current)],
                            drift_share=policy.max_drift_share, num_method="wasserstein",
                            cat_method="jensenshannon", per_column_threshold=thresholds),
            ValueDrift(column=PREDICTION, method="wasserstein", threshold=thresholds[PREDICTION]),
            ClassificationPreset(),
        ],
        include_tests=True,
    )  # fmt: skip
    return report.run(dataset(current), dataset(reference))


def _drift_score(reference: pd.Series, current: pd.Series, categorical: bool) -> float | None:
    """The score Evidently computes for a column: Jensen-Shannon for categories, normed Wasserstein else."""
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test, wasserstein_stat_test
    from evidently.legacy.core import ColumnType

    reference, current = reference.dropna(), current.dropna()
    if reference.empty or current.empty:
        return None
    if categorical:
        return float(jensenshannon_stat_test.func(reference.astype(str), current.astype(str),
                                                  ColumnType.Categorical, 1.0)[0])  # fmt: skip
    return float(wasserstein_stat_test.func(reference.astype(float), current.astype(float),
                                            ColumnType.Numerical, 1.0)[0])  # fmt: skip


def reference_days(reference: pd.DataFrame) -> list[pd.DataFrame]:
    """The reference split by flight day (the version's test days); one frame when it has no day column."""
    if "flight_date" not in reference.columns:
        return [reference]
    return [frame for _, frame in reference.groupby("flight_date", sort=True)]


def drift_thresholds(reference: pd.DataFrame, policy: MonitorPolicy) -> dict[str, float]:
    """Each input's (and the prediction's) drift limit for one day: the policy's, or more where the
    reference's own days differ from each other more than that.

    One day of weather is never distributed like a week of it: against a multi-day reference every
    day "drifts" at a fixed limit, and on-call would get an alert every night. So each test day is
    scored against the other test days, and a day counts as drifted only when it differs from the
    reference more than the most any test day did (and more than the policy's floor).
    """
    days = reference_days(reference)
    limits = {column: policy.feature_drift_threshold for column in [*MODEL_FEATURES, PREDICTION]}
    if len(days) < 2:
        return limits
    for column in limits:
        categorical = column in SCHEDULE_CATEGORICAL
        for index, day in enumerate(days):
            others = pd.concat([d[column] for i, d in enumerate(days) if i != index])
            score = _drift_score(others, day[column], categorical)
            if score is not None and math.isfinite(score):
                limits[column] = max(limits[column], round(score, 4))
    return limits


def worst_reference_day_auc(reference: pd.DataFrame, min_rows: int) -> float | None:
    """The lowest ROC-AUC of the version's own test days (those with enough flights to judge)."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(day[LABEL_KEY].astype(int), day[PREDICTION]) for day in reference_days(reference)
            if len(day) >= min_rows and day[LABEL_KEY].nunique() == 2]  # fmt: skip
    return float(min(aucs)) if len(aucs) >= 2 else None


def read_metrics(snapshot: Any) -> dict[str, Any]:
    """Per-column drift scores and the classification metrics, out of the snapshot's dict."""
    result = snapshot.dict()
    drift: dict[str, float] = {}
    quality: dict[str, float] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"] == "evidently:metric_v2:ValueDrift":
            drift[config["column"]] = float(metric["value"])
        elif config.get("classification_name") == "default" and not isinstance(metric["value"], dict):
            quality[metric["metric_name"].split("(")[0]] = float(metric["value"])
    return {"drift": drift, "quality": quality}


def importance_weights(importance: list[dict[str, Any]] | None, watched: list[str]) -> dict[str, float]:
    """Each watched input's share of the version's permutation importance (its AUC drop when shuffled,
    negatives as 0), summing to 1. A version without importance, or with none above 0, weighs every
    watched input alike, so its weighted drift is its drift share."""
    drops = {row["feature"]: max(float(row["auc_drop"]), 0.0) for row in importance or []}
    total = sum(drops.get(f, 0.0) for f in watched)
    if total <= 0.0:
        return {f: 1.0 / len(watched) for f in watched}
    return {f: drops.get(f, 0.0) / total for f in watched}
