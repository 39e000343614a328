"""The steps of `nightshift_monitor`: score the new days with the stable model, compare them with
the reference the training run saved (Evidently), judge against the policy, alert, ask for retraining.

* **score**: the day's flights (labels are known once they have landed) joined point in time to
  the `flight_delay_v1` features, scored by the `stable` serving model through the serving client
  in batches, logged to `{lake}/predictions/date=…/` with the model version.
* **report**: Evidently data drift of every model input (per feature and as a share), prediction
  drift, and classification quality (ROC-AUC, precision, recall, log loss; Brier and calibration
  error next to them). HTML to `{lake}/reports/drift/date=…/index.html`; one `drift_reports` row
  per day and metric.
* **judge**: every threshold in `MonitorPolicy`; a crossing raises one alert for the day. Drift on
  `persist_days` consecutive days, or a quality drop, requests retraining, at most once a day.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException

from include import lake
from include.alerts import Alert, send
from include.config import MonitorPolicy, Settings
from include.db import SCHEMA, engine, metadata, upsert
from include.features import LABEL_KEY, MODEL_FEATURES, SCHEDULE_CATEGORICAL
from include.inputs import serving_columns

log = logging.getLogger(__name__)

DAG_ID = "nightshift_monitor"
PREDICTION = "prediction"
KEY_COLUMNS = ["flight_date", "carrier", "flight", "origin"]

drift_reports = sa.Table(
    "drift_reports",
    metadata,
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("feature", sa.Text, primary_key=True),
    sa.Column("value", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("crossed", sa.Boolean, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)


class MonitorError(AirflowFailException):
    """Monitoring cannot run (no data for the day, no reference); the message says what to do.

    Deterministic for the data at hand, so the task fails at once instead of retrying."""


# -- score -----------------------------------------------------------------------------------------


def day_frame(settings: Settings, day: dt.date) -> pd.DataFrame:
    """The day's labelled flights with their point-in-time features (as training built them)."""
    from include.dataset import DatasetError, Window, entity_frame, join_features

    try:
        entities = entity_frame(lake.lake_root(settings), Window(end=day, train_days=1, validation_days=0,
                                                                 test_days=0))  # fmt: skip
    except DatasetError as err:
        raise MonitorError(f"{day}: {err}") from err
    joined, _ = join_features(settings, entities)
    return joined


def predictions_file(settings: Settings, day: dt.date):
    """`{lake}/predictions/date=YYYY-MM-DD/part-0.parquet`: the day's flights, predictions and model version."""
    return lake.lake_root(settings) / "predictions" / f"date={day.isoformat()}" / lake.PARTITION_FILE


def score_day(settings: Settings, policy: MonitorPolicy, day: dt.date, run_id: str) -> dict[str, Any]:
    from include.deploy import client_for

    client = client_for(settings)
    version = int(client.status(label="stable")[0]["version"])
    frame = day_frame(settings, day)
    predictions: list[float] = []
    for start in range(0, len(frame), policy.batch_size):
        batch = frame.iloc[start : start + policy.batch_size]
        predictions += [float(p) for p in np.ravel(client.predict_columns(serving_columns(batch), label="stable"))]
    scored = frame[list(dict.fromkeys([*KEY_COLUMNS, *MODEL_FEATURES, LABEL_KEY]))].assign(
        **{PREDICTION: predictions, "model_version": version}
    )
    target = predictions_file(settings, day)
    lake.write_parquet(target, scored)
    log.info("%s: %d flights scored by version %d → %s", day, len(scored), version, lake.uri(target))
    return {"day": day.isoformat(), "rows": len(scored), "model_version": version, "uri": lake.uri(target)}


# -- report ----------------------------------------------------------------------------------------


def reference_for(url: str, version: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The reference the version's training run saved next to its SavedModel, and the version's row."""
    from airflow.sdk import ObjectStoragePath

    from include.registry import get_version

    row = get_version(url, version)
    uri = row["artifact_uri"].rstrip("/").rsplit("/", 1)[0] + "/reference.parquet"
    path = ObjectStoragePath(uri)
    if not path.exists():
        raise MonitorError(f"version {version} has no monitoring reference at {uri}; retrain it with this release")
    return lake.read_parquet(path), row


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


@dataclass(frozen=True)
class CalibratedReference:
    """A version's reference with what its test days say about normal day-to-day variation."""

    frame: pd.DataFrame
    version: dict[str, Any]
    thresholds: dict[str, float]
    worst_day_auc: float | None


@lru_cache(maxsize=4)
def calibrated_reference(url: str, version: int, policy: MonitorPolicy) -> CalibratedReference:
    """Read and calibrate once per version: the report task judges many days against the same one."""
    frame, row = reference_for(url, version)
    return CalibratedReference(frame, row, drift_thresholds(frame, policy),
                               worst_reference_day_auc(frame, policy.min_rows))  # fmt: skip


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


def report_day(settings: Settings, policy: MonitorPolicy, scored: dict[str, Any], run_id: str) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss

    from include.evaluation import expected_calibration_error

    url = settings.require_database_url()
    day = dt.date.fromisoformat(scored["day"])
    began = time.monotonic()
    current = lake.read_parquet(predictions_file(settings, day))
    calibrated = calibrated_reference(url, scored["model_version"], policy)
    reference, version, thresholds = calibrated.frame, calibrated.version, calibrated.thresholds
    snapshot = evidently_report(reference, current, policy, thresholds)
    metrics = read_metrics(snapshot)
    folder = lake.lake_root(settings) / "reports" / "drift" / f"date={day.isoformat()}"
    with tempfile.TemporaryDirectory(prefix="nightshift-drift-") as tmp:
        snapshot.save_html(str(Path(tmp) / "index.html"))
        lake.write_atomic(folder / "index.html", (Path(tmp) / "index.html").read_bytes())
    report_uri = lake.uri(folder / "index.html")
    y, p = current[LABEL_KEY].astype(int).to_numpy(), current[PREDICTION].to_numpy()
    empty = empty_inputs(reference, current)
    feature_drift = {f: metrics["drift"].get(f) for f in MODEL_FEATURES if f in metrics["drift"] or f in empty}
    watched = [f for f in MODEL_FEATURES if f not in policy.exempt_features]
    drifted = [f for f in watched if f in empty] + sorted(
        (f for f in watched if f not in empty and feature_drift.get(f, 0.0) >= thresholds[f]),
        key=lambda f: -feature_drift[f],
    )
    test_auc = float(version["metrics"]["auc"])
    auc = metrics["quality"].get("RocAuc")
    worst_day_auc = calibrated.worst_day_auc
    judged = len(current) >= policy.min_rows and auc is not None
    summary = {
        "day": day.isoformat(),
        "rows": len(current),
        "model_version": scored["model_version"],
        "drift_share": len(drifted) / len(watched),
        "drifted_features": drifted,
        "empty_features": empty,
        "feature_drift": feature_drift,
        "drift_thresholds": thresholds,
        "prediction_drift": metrics["drift"].get(PREDICTION),
        "prediction_rate": float(p.mean()),
        "reference_prediction_rate": float(reference[PREDICTION].mean()),
        "positive_rate": float(y.mean()),
        "auc": auc,
        "test_auc": test_auc,
        "worst_test_day_auc": worst_day_auc,
        # A day's AUC swings with its weather: a drop counts when it is past the policy's limit
        # and below the version's worst test day too.
        "max_auc_drop": max(policy.max_auc_drop, test_auc - worst_day_auc if worst_day_auc is not None else 0.0),
        "precision": metrics["quality"].get("Precision"),
        "recall": metrics["quality"].get("Recall"),
        "log_loss": metrics["quality"].get("LogLoss"),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "quality_judged": judged,
        "report": report_uri,
        "seconds": round(time.monotonic() - began, 1),
    }
    summary["prediction_rate_shift"] = abs(summary["prediction_rate"] - summary["reference_prediction_rate"])
    summary["auc_drop"] = (test_auc - auc) if judged else None
    record_metrics(url, summary, policy, run_id)
    log.info("%s: drift share %.2f (%s), AUC %s vs test %.3f; report %s", day, summary["drift_share"],
             ", ".join(drifted) or "none", f"{auc:.3f}" if auc else "n/a", test_auc, report_uri)  # fmt: skip
    return summary


def record_metrics(url: str, summary: dict[str, Any], policy: MonitorPolicy, run_id: str) -> None:
    """One row per day and metric (and per feature for feature drift), replacing a re-run's."""
    day = dt.date.fromisoformat(summary["day"])
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: float | None, threshold: float | None = None, crossed: bool = False,
            feature: str = "") -> None:  # fmt: skip
        rows.append({"partition_date": day, "metric": metric, "feature": feature, "value": value,
                     "threshold": threshold, "crossed": crossed})  # fmt: skip

    for feature, score in summary["feature_drift"].items():
        add("feature_drift", score, summary["drift_thresholds"][feature], feature in summary["drifted_features"],
            feature)  # fmt: skip
    add("drift_share", summary["drift_share"], policy.max_drift_share, summary["drift_share"] > policy.max_drift_share)
    prediction_limit = summary["drift_thresholds"][PREDICTION]
    add("prediction_drift", summary["prediction_drift"], prediction_limit,
        (summary["prediction_drift"] or 0) >= prediction_limit)  # fmt: skip
    add("prediction_rate", summary["prediction_rate"])
    add("prediction_rate_shift", summary["prediction_rate_shift"], policy.max_prediction_rate_shift,
        summary["prediction_rate_shift"] > policy.max_prediction_rate_shift)  # fmt: skip
    add("positive_rate", summary["positive_rate"])
    for name in ("auc", "precision", "recall", "log_loss", "brier", "ece"):
        add(name, summary[name])
    if summary["auc_drop"] is not None:
        add("auc_drop", summary["auc_drop"], summary["max_auc_drop"], quality_dropped(summary))
    now = dt.datetime.now(dt.UTC)
    common = {"model_version": summary["model_version"], "rows": summary["rows"], "report_uri": summary["report"],
              "run_id": run_id, "computed_at": now}  # fmt: skip
    with engine(url).begin() as conn:
        conn.execute(sa.delete(drift_reports).where(drift_reports.c.partition_date == day,
                                                    drift_reports.c.metric != "retrain_requested"))  # fmt: skip
        upsert(conn, drift_reports, [{**r, **common} for r in rows])


# -- judge -----------------------------------------------------------------------------------------


def quality_dropped(summary: dict[str, Any]) -> bool:
    return summary["auc_drop"] is not None and summary["auc_drop"] > summary["max_auc_drop"]


def crossings(summary: dict[str, Any], policy: MonitorPolicy) -> list[str]:
    found = []
    if summary["drift_share"] > policy.max_drift_share:
        found.append(f"{summary['drift_share']:.0%} of the model's inputs drifted (limit {policy.max_drift_share:.0%})")
    for feature in summary["drifted_features"]:
        score = summary["feature_drift"][feature]
        found.append(f"{feature}: no values at all on the day or in the reference" if score is None
                     else f"{feature}: drift {score:.3f} ≥ {summary['drift_thresholds'][feature]:.3f}")  # fmt: skip
    if quality_dropped(summary):
        worst = summary["worst_test_day_auc"]
        found.append(f"ROC-AUC {summary['auc']:.3f}, {summary['auc_drop']:.3f} below the test AUC "
                     f"{summary['test_auc']:.3f} (limit {summary['max_auc_drop']:.3f}"
                     + (f"; the worst test day had {worst:.3f})" if worst is not None else ")"))  # fmt: skip
    if summary["prediction_rate_shift"] > policy.max_prediction_rate_shift:
        found.append(f"mean predicted risk {summary['prediction_rate']:.3f} vs "
                     f"{summary['reference_prediction_rate']:.3f} on the reference "
                     f"(limit ±{policy.max_prediction_rate_shift})")  # fmt: skip
    return found


def drift_streak(url: str, day: dt.date, policy: MonitorPolicy) -> int:
    """Consecutive days up to `day` whose drift share crossed the limit."""
    with engine(url).connect() as conn:
        rows = dict(conn.execute(
            sa.select(drift_reports.c.partition_date, drift_reports.c.crossed).where(
                drift_reports.c.metric == "drift_share", drift_reports.c.partition_date <= day,
                drift_reports.c.partition_date > day - dt.timedelta(days=policy.persist_days + 1))
        ).all())  # fmt: skip
    streak = 0
    while rows.get(day - dt.timedelta(days=streak)):
        streak += 1
    return streak


def _retrain_requested_today(url: str, at: dt.datetime) -> bool:
    with engine(url).connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(drift_reports).where(
                drift_reports.c.metric == "retrain_requested", drift_reports.c.computed_at >= at.replace(
                    hour=0, minute=0, second=0, microsecond=0))
        ).scalar_one() > 0  # fmt: skip


def judge(settings: Settings, policy: MonitorPolicy, summaries: list[dict[str, Any]], run_id: str,
          task_id: str = "judge") -> dict[str, Any]:  # fmt: skip
    """One alert per day that crossed a threshold; retraining when drift persists or quality drops."""
    url = settings.require_database_url()
    now = dt.datetime.now(dt.UTC)
    retrain_reason = None
    alerted = []
    for summary in summaries:
        day = dt.date.fromisoformat(summary["day"])
        found = crossings(summary, policy)
        if not found:
            continue
        streak = drift_streak(url, day, policy)
        quality = quality_dropped(summary)
        wants = quality or streak >= policy.persist_days
        if wants and retrain_reason is None and not _retrain_requested_today(url, now):
            retrain_reason = (f"ROC-AUC dropped on {day}" if quality
                              else f"drift persisted {streak} days up to {day}")  # fmt: skip
            upsert_retrain(url, day, summary, retrain_reason, run_id, now)
        if retrain_reason and wants:
            next_step = f"retraining was requested ({retrain_reason}); check the new candidate in nightshift_train"
        elif wants:
            next_step = "retraining was already requested today; check nightshift_train"
        else:
            next_step = (f"the drifted share was over its limit {streak} day(s) in a row; "
                         f"{policy.persist_days} in a row request retraining. "
                         "Check the drifted features upstream (source data, weather feed)")  # fmt: skip
        alert_id = send(url, Alert(
            kind="quality_drop" if quality else "drift", key=day.isoformat(),
            severity="critical" if quality else "warning",
            title=f"{'Model quality dropped' if quality else 'Data drift'} on {day} (model version "
                  f"{summary['model_version']}, {summary['rows']} flights)",
            impact="predictions for these flights are less reliable than at training time" if quality else
                   "the model sees inputs unlike its training data; its predictions may be off",
            details=found, next_step=next_step, link=summary["report"],
            dag_id=DAG_ID, task_id=task_id, run_id=run_id,
        ))  # fmt: skip
        alerted.append({"day": day.isoformat(), "alert_id": alert_id, "crossings": len(found)})
    return {"alerts": alerted, "retrain": retrain_reason is not None, "retrain_reason": retrain_reason}


def upsert_retrain(url: str, day: dt.date, summary: dict[str, Any], reason: str, run_id: str, at: dt.datetime) -> None:
    with engine(url).begin() as conn:
        upsert(conn, drift_reports, [{
            "partition_date": day, "metric": "retrain_requested", "feature": reason[:200], "value": 1.0,
            "threshold": None, "crossed": True, "model_version": summary["model_version"], "rows": summary["rows"],
            "report_uri": summary["report"], "run_id": run_id, "computed_at": at,
        }])  # fmt: skip


def resolve_days(params: dict[str, Any], windows: list[list[str]]) -> list[dt.date]:
    """The form's range, else the days the triggering ingestion published."""
    from include.ingest import days_between

    start, end = params.get("start_date"), params.get("end_date")
    if start or end:
        first, last = dt.date.fromisoformat(start or end), dt.date.fromisoformat(end or start)
        if last < first:
            raise MonitorError(f"end_date {last} is before start_date {first}")
        return days_between(first, last)
    if not windows:
        raise MonitorError("no days to monitor: give start_date/end_date, or run after nightshift_ingest")
    return sorted({d for first, last in windows for d in days_between(dt.date.fromisoformat(first),
                                                                       dt.date.fromisoformat(last))})  # fmt: skip
