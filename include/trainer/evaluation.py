"""evaluate: ensemble the tuned members, export ONE SavedModel, score it on the test days.

Also trains the gradient-boosting baseline on the same training rows, scores the champion (the
production model) on the same test rows when there is one, and writes ROC, PR and calibration
plots and an HTML report. Runs inside the training entry point (`python -m include.trainer`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.contract.features import LABEL_KEY, MODEL_FEATURES
from include.contract.inputs import CATEGORICAL, NUMERIC
from include.contract.metrics import expected_calibration_error

log = logging.getLogger("nightshift.evaluation")

PARITY_TOLERANCE = 1e-5
SLICES = {"carrier": "carrier", "origin": "origin", "hour_bucket": "hour_bucket"}
HOUR_BUCKETS = [(0, 6, "night"), (6, 12, "morning"), (12, 18, "afternoon"), (18, 24, "evening")]
MIN_SLICE_ROWS = 200


class ExportMismatch(AssertionError):
    """The exported SavedModel does not reproduce the in-memory ensemble."""


def hour_bucket(hours: pd.Series) -> pd.Series:
    out = pd.Series("night", index=hours.index)
    for low, high, name in HOUR_BUCKETS:
        out[(hours >= low) & (hours < high)] = name
    return out


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut that maximizes F1 on validation."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (p >= threshold).astype(int)
    return {
        "auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
        "brier": float(brier_score_loss(y, p)),
        "accuracy": float(accuracy_score(y, predicted)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "ece": expected_calibration_error(y, p),
        "threshold": float(threshold),
        "predicted_positive_rate": float(predicted.mean()),
        "mean_prediction": float(p.mean()),
        "non_finite_predictions": int((~np.isfinite(p)).sum()),
    }


def slice_aucs(frame: pd.DataFrame, p: np.ndarray) -> dict[str, dict[str, float]]:
    """AUC per carrier, origin and hour-of-day bucket (slices with both classes and enough rows)."""
    from sklearn.metrics import roc_auc_score

    keyed = frame.assign(hour_bucket=hour_bucket(frame["sched_dep_hour"]), _p=p)
    out: dict[str, dict[str, float]] = {}
    for name, column in SLICES.items():
        out[name] = {}
        for value, part in keyed.groupby(column):
            if len(part) >= MIN_SLICE_ROWS and part[LABEL_KEY].nunique() == 2:
                out[name][str(value)] = float(roc_auc_score(part[LABEL_KEY], part["_p"]))
    return out


def fit_ensemble_weights(y: np.ndarray, member_predictions: np.ndarray) -> list[float]:
    """Convex weights minimizing validation log loss (softmax-parametrized)."""
    from scipy.optimize import minimize

    k = member_predictions.shape[1]
    if k == 1:
        return [1.0]

    def loss(logits: np.ndarray) -> float:
        w = np.exp(logits - logits.max())
        w /= w.sum()
        p = np.clip(member_predictions @ w, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    result = minimize(loss, np.zeros(k), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    w = np.exp(result.x - result.x.max())
    return [round(float(v), 6) for v in w / w.sum()]


def gbdt_baseline(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> tuple[float, np.ndarray]:
    """scikit-learn's HistGradientBoostingClassifier on the same rows and features."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    def encode(frame: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
        out = frame[NUMERIC].astype("float64").copy()
        for c in CATEGORICAL:
            out[c] = pd.Categorical(frame[c].fillna("").astype(str), categories=categories[c])
        return out

    # Keep the 250 most frequent values per categorical (the estimator's limit is 255).
    categories = {c: train[c].fillna("").astype(str).value_counts().index[:250].tolist() for c in CATEGORICAL}
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed, max_iter=300,
                                           early_stopping=True, validation_fraction=0.1)  # fmt: skip
    model.fit(encode(train, categories), train[LABEL_KEY].astype(int))
    p = model.predict_proba(encode(test, categories))[:, 1]
    return float(roc_auc_score(test[LABEL_KEY].astype(int), p)), p


def _predict_saved_model(path: Path, x: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    tensors = {k: tf.constant(v) for k, v in x.items()}
    outputs = signature(**tensors)
    return next(iter(outputs.values())).numpy().reshape(-1)


def select_members(folder: Path) -> list[Path]:
    """Members of every tuning shard, the best `ensemble_size` of them by validation AUC."""
    scored = []
    for summary_file in sorted(folder.rglob("tune.json")):
        summary = json.loads(summary_file.read_text())
        for member in summary["members"]:
            scored.append((-member["val_auc"], str(summary_file.parent / f"member_{member['index']}.keras")))
    size = max((len(json.loads(f.read_text())["members"]) for f in folder.rglob("tune.json")), default=0)
    return [Path(path) for _, path in sorted(scored)[:size]]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from include.contract.inputs import to_model_inputs
    from include.trainer import model as _model  # registers the custom layers before loading
    from include.trainer.io import download_dir, read_split, seed_everything, upload_dir
    from include.trainer.model import build_ensemble, labels
    from include.trainer.report import plot_curves, write_report

    started = time.monotonic()
    seed_everything(args.seed)
    work = Path(tempfile.mkdtemp(prefix="nightshift-eval-"))
    members_dir = download_dir(args.out, work / "members")
    paths = select_members(members_dir)
    if not paths:
        raise SystemExit(f"no member_*.keras under {args.out}; run `tune` first")
    members = [keras.saving.load_model(p, custom_objects={"FillMissing": _model.FillMissing}) for p in paths]
    families = [m.name.removeprefix("flight_delay").lstrip("_") or "mlp" for m in members]  # flight_delay_<family>
    for index, member in enumerate(members):
        member.name = f"member_{index}"  # nested models need distinct names
    train, validation, test = (read_split(args.dataset, s) for s in ("train", "validation", "test"))
    x_val, y_val = to_model_inputs(validation), labels(validation)
    x_test, y_test = to_model_inputs(test), labels(test)
    member_val = np.column_stack([m.predict(x_val, batch_size=4096, verbose=0).reshape(-1) for m in members])
    weights = fit_ensemble_weights(y_val, member_val)
    ensemble = build_ensemble(members, weights)
    in_memory = ensemble.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
    export_dir = work / "export" / "saved_model"
    ensemble.export(str(export_dir), format="tf_saved_model", verbose=False)
    exported = _predict_saved_model(export_dir, x_test)
    parity = float(np.max(np.abs(exported - in_memory)))
    if not parity <= PARITY_TOLERANCE:
        raise ExportMismatch(f"exported SavedModel differs from the ensemble by {parity:.2e} > {PARITY_TOLERANCE}")
    threshold = best_threshold(y_val, member_val @ np.array(weights))
    metrics = classification_metrics(y_test, exported, threshold)
    from sklearn.metrics import roc_auc_score

    member_test = np.column_stack([m.predict(x_test, batch_size=4096, verbose=0).reshape(-1) for m in members])
    member_metrics = [{"member": i, "family": families[i], "weight": weights[i],
                       "val_auc": round(float(roc_auc_score(y_val, member_val[:, i])), 6),
                       "test_auc": round(float(roc_auc_score(y_test, member_test[:, i])), 6)}
                      for i in range(len(members))]  # fmt: skip
    gbdt_auc, gbdt_p = gbdt_baseline(train, test, args.seed)
    champion = None
    curves = {"ensemble": exported, "gbdt baseline": gbdt_p}
    if args.champion:
        champion_dir = download_dir(args.champion, work / "champion")
        champion_p = _predict_saved_model(champion_dir, x_test)
        champion = {"uri": args.champion, "metrics": classification_metrics(y_test, champion_p, threshold),
                    "slices": slice_aucs(test, champion_p)}  # fmt: skip
        curves["champion"] = champion_p
    # The monitoring reference: the test days' model inputs, labels and the exported model's predictions.
    reference = test[[*MODEL_FEATURES, LABEL_KEY, "flight_date"]].assign(prediction=exported)
    reference.to_parquet(work / "export" / "reference.parquet", index=False)
    report_dir = work / "export" / "report"
    report_dir.mkdir(parents=True)
    summary: dict[str, Any] = {
        "command": "evaluate",
        "dataset": args.dataset,
        "test_rows": len(test),
        "weights": weights,
        "members": len(members),
        "member_metrics": member_metrics,
        "metrics": metrics,
        "slices": slice_aucs(test, exported),
        "gbdt_auc": gbdt_auc,
        "auc_ratio": metrics["auc"] / gbdt_auc,
        "export_parity_max_abs_diff": parity,
        "champion": champion,
        "saved_model": f"{args.out.rstrip('/')}/saved_model",
        "report": f"{args.out.rstrip('/')}/report/index.html",
        "reference": f"{args.out.rstrip('/')}/reference.parquet",
    }
    plots = plot_curves(y_test, curves, report_dir)
    write_report(report_dir, summary, plots)
    summary["seconds"] = round(time.monotonic() - started, 1)
    (work / "export" / "evaluate.json").write_text(json.dumps(summary, indent=2))
    upload_dir(work / "export", args.out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("ensemble AUC %.4f, GBDT %.4f, ratio %.4f", metrics["auc"], gbdt_auc, summary["auc_ratio"])
    return summary
