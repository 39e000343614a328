"""The steps of `nightshift_monitor`: score the new days with the stable model, compare them with
the reference the training run saved (Evidently), judge against the policy, alert, ask for retraining.

* **score**: the day's flights (labels are known once they have landed) joined point in time to
  the `flight_delay_v2` features, scored by the `stable` serving model through the serving client
  in batches, logged to `{lake}/predictions/date=…/` with the model version.
* **report**: Evidently data drift of every model input (per feature and as a share), prediction
  drift, and classification quality (ROC-AUC, precision, recall, log loss; Brier and calibration
  error next to them). HTML to `{lake}/reports/drift/date=…/index.html`; one `drift_reports` row
  per day and metric.
* **judge**: every threshold in `MonitorPolicy`; a crossing raises one alert for the day. Drift on
  `persist_days` consecutive days, or a quality drop, requests retraining, at most once a day;
  the request is recorded, then emitted, then marked emitted, so a retried judge never loses it.
"""

from __future__ import annotations

import datetime as dt
import logging
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

from include.contract.features import FLIGHT_KEY, LABEL_KEY, MODEL_FEATURES, flight_key
from include.contract.inputs import serving_columns
from include.contract.metrics import expected_calibration_error
from include.core import lake
from include.core.alerts import Alert, send
from include.core.assets import MONITOR_DAG
from include.core.calendar import form_days, window_days
from include.core.config import MonitorPolicy, Settings
from include.db import drift_reports, engine, retrain_requests, upsert
from include.monitor.drift import (
    PREDICTION,
    drift_thresholds,
    empty_inputs,
    evidently_report,
    importance_weights,
    read_metrics,
    worst_reference_day_auc,
)
from include.serving.client import client_for

log = logging.getLogger(__name__)


class MonitorError(AirflowFailException):
    """Monitoring cannot run (no data for the day, no reference); the message says what to do.

    Deterministic for the data at hand, so the task fails at once instead of retrying."""


# -- score -----------------------------------------------------------------------------------------


def day_frame(settings: Settings, day: dt.date) -> pd.DataFrame:
    """The day's labelled flights with their point-in-time features (as training built them)."""
    from include.train.dataset import DatasetError, join_features, labelled_flights

    try:
        entities = labelled_flights(lake.lake_root(settings), [day])
    except DatasetError as err:
        raise MonitorError(f"{day}: {err}") from err
    joined, _ = join_features(settings, entities)
    return joined


def predictions_file(settings: Settings, day: dt.date):
    """`{lake}/predictions/date=YYYY-MM-DD/part-0.parquet`: the day's flights, predictions and model version."""
    return lake.lake_root(settings) / "predictions" / f"date={day.isoformat()}" / lake.PARTITION_FILE


def feature_skew(offline: pd.DataFrame, served: pd.DataFrame) -> dict[str, Any]:
    """How the inputs the service used differ from the offline point-in-time ones, flight by flight (both
    keyed by `flight_key`): the share of flights with any input differing, and the inputs that differ most."""
    import numpy as np

    from include.contract.inputs import CATEGORICAL

    both = offline.merge(served, on="flight_key", suffixes=("_offline", "_served"))
    differs = np.zeros(len(both), dtype=bool)
    counts = {}
    for feature in MODEL_FEATURES:
        a, b = both[f"{feature}_offline"], both[f"{feature}_served"]
        if feature in CATEGORICAL:
            wrong = a.fillna("").astype(str).to_numpy() != b.fillna("").astype(str).to_numpy()
        else:
            x, y = a.astype("float64").to_numpy(), b.astype("float64").to_numpy()
            wrong = ~(np.isclose(x, y, rtol=1e-6, atol=1e-6) | (np.isnan(x) & np.isnan(y)))
        differs |= wrong
        if wrong.any():
            counts[feature] = int(wrong.sum())
    worst = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    return {"flights": len(both), "share": round(float(differs.mean()) if len(both) else 0.0, 4),
            "features": worst}  # fmt: skip


def _served_scores(settings: Settings, policy: MonitorPolicy, day: dt.date, frame: pd.DataFrame) -> Any:
    """The day's flights as the service scored them, when it scored enough of them: (scored frame, version,
    skew); else None. Only the version that answered most of them counts (a canary's share is judged apart)."""
    from include.predict.served import served_day

    served = served_day(settings, day)
    if served is None:
        return None
    version = int(served["model_version"].mode().iloc[0])
    served = served[served["model_version"] == version]
    keys = frame[["carrier", "flight", "origin"]].itertuples(index=False)
    keyed = frame.assign(flight_key=[flight_key(day, *k) for k in keys])
    # The key's carrier and origin come with the served inputs (the same values): one copy of each column.
    own = [c for c in dict.fromkeys([*FLIGHT_KEY, LABEL_KEY]) if c not in MODEL_FEATURES]
    labelled = keyed[["flight_key", *own]].merge(served[["flight_key", *MODEL_FEATURES, "p_delayed"]], on="flight_key")
    if len(labelled) < max(policy.min_rows, policy.min_served_share * len(keyed)):
        log.info("%s: the service answered %d of the day's %d flights; the day is scored offline", day,
                 len(labelled), len(keyed))  # fmt: skip
        return None
    skew = feature_skew(keyed[["flight_key", *MODEL_FEATURES]], served[["flight_key", *MODEL_FEATURES]])
    scored = labelled.rename(columns={"p_delayed": PREDICTION})
    scored = scored[[*dict.fromkeys([*FLIGHT_KEY, *MODEL_FEATURES, LABEL_KEY]), PREDICTION]]
    return scored.assign(model_version=version), version, skew


def score_day(settings: Settings, policy: MonitorPolicy, day: dt.date, run_id: str) -> dict[str, Any]:
    """The day's flights with their predictions: what the prediction service actually served, at the version
    that served it, when it answered at least `min_rows` of them (and how its inputs differ from the offline
    point-in-time ones); else the day scored with the version `stable` points at now. Every request names
    that version, so a promotion while the day is scored cannot mix two models' predictions under one number."""
    frame = day_frame(settings, day)
    served = _served_scores(settings, policy, day, frame)
    if served is not None:
        scored, version, skew = served
        target = predictions_file(settings, day)
        lake.write_parquet(target, scored)
        log.info("%s: %d served predictions of version %d → %s; %.1f%% of flights served with inputs unlike the "
                 "offline ones", day, len(scored), version, lake.uri(target), 100 * skew["share"])  # fmt: skip
        return {"day": day.isoformat(), "rows": len(scored), "model_version": version, "uri": lake.uri(target),
                "source": "served", "skew": skew}  # fmt: skip
    predictions: list[float] = []
    with client_for(settings) as client:
        version = int(client.status(label="stable")[0]["version"])
        for start in range(0, len(frame), policy.batch_size):
            batch = frame.iloc[start : start + policy.batch_size]
            predictions += [float(p) for p in np.ravel(client.predict_columns(serving_columns(batch),
                                                                              version=version))]  # fmt: skip
    scored = frame[list(dict.fromkeys([*FLIGHT_KEY, *MODEL_FEATURES, LABEL_KEY]))].assign(
        **{PREDICTION: predictions, "model_version": version}
    )
    target = predictions_file(settings, day)
    lake.write_parquet(target, scored)
    log.info("%s: %d flights scored by version %d → %s", day, len(scored), version, lake.uri(target))
    return {"day": day.isoformat(), "rows": len(scored), "model_version": version, "uri": lake.uri(target),
            "source": "offline"}  # fmt: skip


# -- report ----------------------------------------------------------------------------------------


def reference_for(settings: Settings, version: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The reference the version's training run saved (its test days, where the registry records them)."""
    from include.train.registry import get_version

    row = get_version(settings.require_database_url(), version)
    uri = row.get("reference_uri")
    if not uri:
        raise MonitorError(f"version {version} records no monitoring reference; retrain it with this release")
    path = lake.at(settings, uri)
    if not path.exists():
        raise MonitorError(f"version {version}'s monitoring reference {uri} is missing from the lake; retrain it")
    return lake.read_parquet(path), row


@dataclass(frozen=True)
class CalibratedReference:
    """A version's reference with what its test days say about normal day-to-day variation."""

    frame: pd.DataFrame
    version: dict[str, Any]
    thresholds: dict[str, float]
    worst_day_auc: float | None


@lru_cache(maxsize=4)
def calibrated_reference(settings: Settings, version: int, policy: MonitorPolicy) -> CalibratedReference:
    """Read and calibrate once per version: the report task judges many days against the same one."""
    frame, row = reference_for(settings, version)
    return CalibratedReference(frame, row, drift_thresholds(frame, policy),
                               worst_reference_day_auc(frame, policy.min_rows))  # fmt: skip


def report_day(settings: Settings, policy: MonitorPolicy, scored: dict[str, Any], run_id: str) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss

    url = settings.require_database_url()
    day = dt.date.fromisoformat(scored["day"])
    began = time.monotonic()
    current = lake.read_parquet(predictions_file(settings, day))
    calibrated = calibrated_reference(settings, scored["model_version"], policy)
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
    weights = importance_weights(version["metrics"].get("importance"), watched)
    # Empty inputs first (a feed is down), then the drifted inputs that matter most to this version.
    drifted = [f for f in watched if f in empty] + sorted(
        (f for f in watched if f not in empty and feature_drift.get(f, 0.0) >= thresholds[f]),
        key=lambda f: (-weights[f], -feature_drift[f]),
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
        # The share of the version's importance the drifted inputs carry: what a drift warning is judged on.
        "weighted_drift": round(sum(weights[f] for f in drifted), 6),
        "importance_weights": {f: round(w, 6) for f, w in weights.items()},
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
        "source": scored.get("source", "offline"),  # served: what the prediction service answered
        "skew": scored.get("skew"),
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
    add("weighted_drift", summary["weighted_drift"], policy.max_weighted_drift, drift_alerted(summary, policy))
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
    if summary.get("skew"):
        add("serving_skew_share", summary["skew"]["share"], policy.max_skew_share, skewed(summary, policy))
    now = dt.datetime.now(dt.UTC)
    common = {"model_version": summary["model_version"], "rows": summary["rows"], "report_uri": summary["report"],
              "run_id": run_id, "computed_at": now}  # fmt: skip
    with engine(url).begin() as conn:
        conn.execute(sa.delete(drift_reports).where(drift_reports.c.partition_date == day))
        upsert(conn, drift_reports, [{**r, **common} for r in rows])


# -- judge -----------------------------------------------------------------------------------------


def skewed(summary: dict[str, Any], policy: MonitorPolicy) -> bool:
    """The service's inputs differed from the offline point-in-time ones on more flights than the limit."""
    return bool(summary.get("skew")) and summary["skew"]["share"] > policy.max_skew_share


def quality_dropped(summary: dict[str, Any]) -> bool:
    return summary["auc_drop"] is not None and summary["auc_drop"] > summary["max_auc_drop"]


def drift_alerted(summary: dict[str, Any], policy: MonitorPolicy) -> bool:
    """Drift worth waking on-call for: the drifted inputs carry more than `max_weighted_drift` of the
    version's importance, or an input has no values at all (a feed is down)."""
    return summary["weighted_drift"] > policy.max_weighted_drift or bool(summary["empty_features"])


def drifted_inputs(summary: dict[str, Any]) -> list[str]:
    """The drifted inputs, most important first, each with its share of the importance and its drift."""
    weights = summary["importance_weights"]
    out = []
    for feature in summary["drifted_features"]:
        score = summary["feature_drift"][feature]
        out.append(f"{feature}: no values at all on the day or in the reference" if score is None
                   else f"{feature} ({weights.get(feature, 0.0):.0%} of the importance): drift {score:.3f} ≥ "
                        f"{summary['drift_thresholds'][feature]:.3f}")  # fmt: skip
    return out


def crossings(summary: dict[str, Any], policy: MonitorPolicy) -> list[str]:
    """What alerts on a day. Drift alerts by importance: a drifted input that matters little is in the
    day's report and its `drift_reports` rows, not in an alert. A quality drop always alerts."""
    found = []
    if drift_alerted(summary, policy):
        found.append(
            f"the drifted inputs carry {summary['weighted_drift']:.0%} of the model's importance "
            f"(limit {policy.max_weighted_drift:.0%}; {summary['drift_share']:.0%} of its inputs drifted)"
        )
        found.extend(drifted_inputs(summary))
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
    """Consecutive days up to `day` whose importance-weighted drift alerted."""
    with engine(url).connect() as conn:
        rows = dict(conn.execute(
            sa.select(drift_reports.c.partition_date, drift_reports.c.crossed).where(
                drift_reports.c.metric == "weighted_drift", drift_reports.c.partition_date <= day,
                drift_reports.c.partition_date > day - dt.timedelta(days=policy.persist_days + 1))
        ).all())  # fmt: skip
    streak = 0
    while rows.get(day - dt.timedelta(days=streak)):
        streak += 1
    return streak


def _todays_request(url: str, run_id: str, at: dt.datetime) -> dict[str, Any] | None:
    """This run's retraining request (also when a retry comes after midnight), else today's latest."""
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    r = retrain_requests
    with engine(url).connect() as conn:
        row = conn.execute(
            sa.select(r).where(sa.or_(r.c.run_id == run_id, r.c.requested_at >= midnight))
            .order_by((r.c.run_id == run_id).desc(), r.c.requested_at.desc()).limit(1)
        ).mappings().first()  # fmt: skip
    return dict(row) if row else None


def judge(settings: Settings, policy: MonitorPolicy, summaries: list[dict[str, Any]], run_id: str,
          task_id: str = "judge") -> dict[str, Any]:  # fmt: skip
    """One alert per day that crossed a threshold; retraining when drift persists or quality drops.

    At most one request a day. A request recorded but never emitted (this task failed after writing
    it, or its run never reached `request_retraining`) is this verdict's request: a retry emits it."""
    url = settings.require_database_url()
    now = dt.datetime.now(dt.UTC)
    retrain: dict[str, Any] | None = None
    alerted = []
    for summary in summaries:
        day = dt.date.fromisoformat(summary["day"])
        if skewed(summary, policy):
            skew = summary["skew"]
            alert_id = send(url, Alert(
                kind="serving_skew", key=day.isoformat(), severity="warning",
                title=f"Training/serving skew on {day}: {100 * skew['share']:.1f}% of {skew['flights']} served "
                      f"flights had inputs unlike the offline ones (model version {summary['model_version']})",
                impact="the prediction service scores flights on features training never saw for them",
                details=[f"{feature}: {count} flights" for feature, count in skew["features"].items()],
                next_step="check the online store's materialization (nightshift_ingest.materialize) and the "
                          "service's feature lookup (include/predict/online.py)",
                link=summary["report"], dag_id=MONITOR_DAG, task_id=task_id, run_id=run_id,
            ))  # fmt: skip
            alerted.append({"day": day.isoformat(), "alert_id": alert_id, "kind": "serving_skew"})
        found = crossings(summary, policy)
        if not found:
            continue
        streak = drift_streak(url, day, policy)
        quality = quality_dropped(summary)
        wants = quality or streak >= policy.persist_days
        if wants and retrain is None:
            retrain = _todays_request(url, run_id, now)
            if retrain is None:
                reason = (f"ROC-AUC dropped on {day}" if quality
                          else f"drift persisted {streak} days up to {day}")  # fmt: skip
                retrain = upsert_retrain(url, day, summary, reason, run_id, now)
            elif retrain["emitted_at"] is None:
                log.info("retraining requested for %s but never emitted (%s): emitting it now",
                         retrain["partition_date"], retrain["reason"])  # fmt: skip
        pending = retrain is not None and retrain["emitted_at"] is None
        if pending and wants:
            next_step = f"retraining was requested ({retrain['reason']}); check the new candidate in nightshift_train"
        elif wants:
            next_step = "retraining was already requested today; check nightshift_train"
        else:
            next_step = (f"drift that matters to the model alerted {streak} day(s) in a row; "
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
            dag_id=MONITOR_DAG, task_id=task_id, run_id=run_id,
        ))  # fmt: skip
        alerted.append({"day": day.isoformat(), "alert_id": alert_id, "crossings": len(found)})
    emit = retrain is not None and retrain["emitted_at"] is None
    return {"alerts": alerted, "retrain": emit, "retrain_reason": retrain["reason"] if emit else None,
            "retrain_day": retrain["partition_date"].isoformat() if emit else None}  # fmt: skip


def upsert_retrain(url: str, day: dt.date, summary: dict[str, Any], reason: str, run_id: str,
                   at: dt.datetime) -> dict[str, Any]:  # fmt: skip
    """Record the day's request, not yet emitted; returns the row."""
    row = {"partition_date": day, "reason": reason, "model_version": summary["model_version"],
           "report_uri": summary["report"], "run_id": run_id, "requested_at": at, "emitted_at": None}  # fmt: skip
    with engine(url).begin() as conn:
        upsert(conn, retrain_requests, [row])
    return row


def mark_retrain_emitted(url: str, day: dt.date, at: dt.datetime) -> None:
    """`request_retraining` succeeded, so Airflow holds its `retrain_requested` event: no retry emits it again."""
    r = retrain_requests
    with engine(url).begin() as conn:
        conn.execute(sa.update(r).where(r.c.partition_date == day, r.c.emitted_at.is_(None)).values(emitted_at=at))


def not_yet_monitored(url: str, days: list[dt.date], run_id: str) -> list[dt.date]:
    """Of the days an ingestion published, those worth monitoring with the version serving now.

    A triggered run leaves out the days up to the end of that version's data window (what it was
    trained, validated and tested on: its reference, not new traffic) and the days another run has
    already reported at that version since the day's data last passed validation (a day ingested
    again with corrected data is monitored again). So the first night after `make demo` monitors
    that night, not the 98 bootstrap days again; a range asked for in the form is monitored as asked."""
    from include.db import validation_results as v
    from include.train.registry import production_version

    serving = production_version(url)
    if serving is None or not days:
        return days
    version, window_end = serving["version"], dt.date.fromisoformat(serving["data_window"]["end"])
    with engine(url).connect() as conn:
        reported = dict(
            conn.execute(
                sa.select(drift_reports.c.partition_date, sa.func.max(drift_reports.c.computed_at))
                .where(
                    drift_reports.c.metric == "drift_share",
                    drift_reports.c.model_version == version,
                    drift_reports.c.run_id != run_id,
                    drift_reports.c.partition_date.in_(days),
                )
                .group_by(drift_reports.c.partition_date)
            ).all()
        )
        validated = dict(conn.execute(
            sa.select(v.c.partition_date, sa.func.max(v.c.validated_at))
            .where(v.c.success, v.c.partition_date.in_(days)).group_by(v.c.partition_date)
        ).all())  # fmt: skip
    seen = {d for d, at in reported.items() if d not in validated or at >= validated[d]}
    trained = [d for d in days if d <= window_end]
    again = [d for d in days if d > window_end and d in seen]
    if trained:
        log.warning("monitor: %d day(s) up to the end of version %d's data window (%s) left out: %s…%s",
                    len(trained), version, window_end, trained[0], trained[-1])  # fmt: skip
    if again:
        log.warning("monitor: %d day(s) already reported at version %d since their last validation left out: %s",
                    len(again), version, [d.isoformat() for d in again[:20]])  # fmt: skip
    return [d for d in days if d > window_end and d not in seen]


def resolve_days(params: dict[str, Any], windows: list[list[str]], url: str | None = None) -> list[dt.date]:
    """The form's range as asked, else the days the triggering ingestion published; with `url`, of
    those only the days whose latest validation passed (a day rejected since is skipped, with a warning)."""
    days = form_days(params)
    if days is not None:
        return days
    if not windows:
        raise MonitorError("no days to monitor: give start_date/end_date, or run after nightshift_ingest")
    days = window_days(windows)
    if url is None:
        return days
    from include.ingest.records import published_days

    published = published_days(url, days)
    skipped = [d for d in days if d not in published]
    if skipped:
        log.warning("monitor: %d day(s) not published (rejected or never validated), skipped: %s", len(skipped),
                    [d.isoformat() for d in skipped[:20]])  # fmt: skip
    if not published:
        raise MonitorError(f"no published day among {days[0]}…{days[-1]}: each was rejected by validation "
                           "or never ingested")  # fmt: skip
    return [d for d in days if d in published]
