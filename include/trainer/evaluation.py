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
from include.contract.training import TREE_MAX_DEPTH

log = logging.getLogger("nightshift.evaluation")

PARITY_TOLERANCE = 1e-5
SLICES = {"carrier": "carrier", "origin": "origin", "hour_bucket": "hour_bucket"}
HOUR_BUCKETS = [(0, 6, "night"), (6, 12, "morning"), (12, 18, "afternoon"), (18, 24, "evening")]
MIN_SLICE_ROWS = 200
IMPORTANCE_REPEATS = 5


class ExportMismatch(AssertionError):
    """The exported SavedModel does not reproduce the in-memory ensemble."""


def hour_bucket(hours: pd.Series) -> pd.Series:
    out = pd.Series("night", index=hours.index)
    for low, high, name in HOUR_BUCKETS:
        out[(hours >= low) & (hours < high)] = name
    return out


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


GBDT_GRID = (  # a small search of the baseline's own, judged on the same validation split
    {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 40, "l2_regularization": 1.0},
    {"learning_rate": 0.1, "max_leaf_nodes": 63, "min_samples_leaf": 100, "l2_regularization": 1.0},
    {"learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 20, "l2_regularization": 0.0},
)
GBDT_MAX_ITER = 500


def _gbdt_categories(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The 250 most frequent values per categorical (the estimator's limit is 255), ties by value, so
    the same rows always give the same encoding."""
    out = {}
    for c in CATEGORICAL:
        counts = frame[c].fillna("").astype(str).value_counts()
        out[c] = sorted(counts.index, key=lambda v, counts=counts: (-counts[v], v))[:250]
    return out


def _gbdt_encode(frame: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    # Numbers rounded to float32 first, as the SavedModel's inputs carry them, so that the trees compiled
    # into the SavedModel (`trees.py`) see exactly the values the classifier learned from.
    out = frame[NUMERIC].astype("float32").astype("float64")
    for c in CATEGORICAL:
        out[c] = pd.Categorical(frame[c].fillna("").astype(str), categories=categories[c])
    return out


# The tree member's search: the baseline's own grid, its trees held to TREE_MAX_DEPTH levels so that the walk
# compiled into the SavedModel (`trees.py`) takes at most that many steps per row, whatever the batch.
TREE_MEMBER_GRID = tuple({**params, "max_depth": TREE_MAX_DEPTH} for params in GBDT_GRID)
TREE_MEMBER_MAX_ITER = GBDT_MAX_ITER


def gbdt_search(train: pd.DataFrame, validation: pd.DataFrame, seed: int, grid: tuple[dict[str, Any], ...] = GBDT_GRID,
                max_iter: int = GBDT_MAX_ITER) -> dict[str, Any]:  # fmt: skip
    """scikit-learn's HistGradientBoostingClassifier on the model's inputs: each of `grid` fit on train, its
    number of trees by early stopping on the validation split's log loss, the best by validation AUC;
    then the best refit on train + validation with that many trees (`model`). The best fit on train only
    is kept as its held-out twin (`holdout`). Seeded, so the same rows give the same classifiers."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    def model(params: dict[str, Any], max_iter: int, early_stopping: bool) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed, max_iter=max_iter,
                                              early_stopping=early_stopping, n_iter_no_change=20, **params)  # fmt: skip

    categories = _gbdt_categories(train)
    x_train, y_train = _gbdt_encode(train, categories), train[LABEL_KEY].astype(int)
    x_val, y_val = _gbdt_encode(validation, categories), validation[LABEL_KEY].astype(int)
    trials, fits = [], []
    for params in grid:
        fitted = model(params, max_iter, early_stopping=True).fit(x_train, y_train, X_val=x_val, y_val=y_val)
        auc = roc_auc_score(y_val, fitted.predict_proba(x_val)[:, 1])
        trials.append({**params, "trees": int(fitted.n_iter_), "val_auc": round(float(auc), 6)})
        fits.append(fitted)
    chosen = max(range(len(trials)), key=lambda i: trials[i]["val_auc"])
    best = trials[chosen]
    both = pd.concat([train, validation], ignore_index=True)
    categories = _gbdt_categories(both)
    final = model({k: best[k] for k in grid[chosen]}, best["trees"], early_stopping=False)
    final.fit(_gbdt_encode(both, categories), both[LABEL_KEY].astype(int))
    return {"best": best, "trials": trials, "model": final, "categories": categories, "holdout": fits[chosen]}


def gbdt_baseline(train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict[str, Any]:
    """What a user would pick instead: `gbdt_search` over GBDT_GRID (leaf-wise trees, as deep as they
    grow), scored on the test days."""
    from sklearn.metrics import roc_auc_score

    found = gbdt_search(train, validation, seed)
    p = found["model"].predict_proba(_gbdt_encode(test, found["categories"]))[:, 1]
    return {"auc": float(roc_auc_score(test[LABEL_KEY].astype(int), p)), "p": p, "best": found["best"],
            "trials": found["trials"]}  # fmt: skip


def _saved_model_predictor(path: Path):
    """The SavedModel's serving signature as a function of the model's input arrays."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]

    def predict(x: dict[str, np.ndarray]) -> np.ndarray:
        outputs = signature(**{k: tf.constant(v) for k, v in x.items()})
        return next(iter(outputs.values())).numpy().reshape(-1)

    return predict


def _predict_saved_model(path: Path, x: dict[str, np.ndarray]) -> np.ndarray:
    return _saved_model_predictor(path)(x)


def permutation_importance(predict, x: dict[str, np.ndarray], y: np.ndarray, seed: int,
                           repeats: int = IMPORTANCE_REPEATS) -> list[dict[str, Any]]:  # fmt: skip
    """Each input's AUC drop when its values are shuffled across the rows (the others kept), over `repeats`
    shuffles: mean and a 95 % interval (normal, over repeats). Sorted by the mean drop, largest first."""
    from sklearn.metrics import roc_auc_score

    base = float(roc_auc_score(y, predict(x)))
    rng = np.random.default_rng(seed)
    rows = []
    for feature in MODEL_FEATURES:
        drops = []
        for _ in range(repeats):
            shuffled = {**x, feature: x[feature][rng.permutation(len(y))]}
            drops.append(base - float(roc_auc_score(y, predict(shuffled))))
        mean, half = float(np.mean(drops)), float(1.96 * np.std(drops, ddof=1) / np.sqrt(repeats))
        rows.append({"feature": feature, "auc_drop": round(mean, 6), "ci_low": round(mean - half, 6),
                     "ci_high": round(mean + half, 6)})  # fmt: skip
    return sorted(rows, key=lambda r: -r["auc_drop"])


def select_members(folder: Path, group: str = "members") -> list[tuple[Path, Path]]:
    """Members of every tuning shard, the best `ensemble_size` of them by validation AUC: for each, the model
    to export and the one to judge on validation (the held-out one when tune refit the member on train +
    validation; else the same file). `group` is `members` (a fresh search) or `warm_members` (the
    champion's members fine-tuned)."""
    scored = []
    sizes = [0]
    for summary_file in sorted(folder.rglob("tune.json")):
        summary = json.loads(summary_file.read_text())
        sizes.append(len(summary.get(group) or []))
        for member in summary.get(group) or []:
            exported = summary_file.parent / f"member_{member['index']}.keras"
            holdout = summary_file.parent / f"member_{member['index']}.holdout.keras"
            scored.append((-member["val_auc"], str(exported), str(holdout if holdout.exists() else exported)))
    return [(Path(exported), Path(holdout)) for _, exported, holdout in sorted(scored)[: max(sizes)]]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import keras
    from sklearn.metrics import roc_auc_score

    from include.contract.inputs import to_model_inputs
    from include.trainer import model as _model  # registers the custom layers before loading
    from include.trainer.combine import choose_calibrator, choose_combiner, f1_threshold, fit_combiner
    from include.trainer.io import download_dir, read_split, seed_everything, upload_dir
    from include.trainer.model import build_ensemble, labels
    from include.trainer.report import plot_curves, plot_importance, write_report
    from include.trainer.trees import compile_forest, tree_member

    started = time.monotonic()
    seed_everything(args.seed)
    work = Path(tempfile.mkdtemp(prefix="nightshift-eval-"))
    members_dir = download_dir(args.out, work / "members")
    candidates = {"fresh": select_members(members_dir, "members"),
                  "champion": select_members(members_dir, "warm_members")}  # fmt: skip
    groups = {origin: pairs for origin, pairs in candidates.items() if pairs}
    if not groups:
        raise SystemExit(f"no member_*.keras under {args.out}; run `tune` first")

    def load(path: Path):
        return keras.saving.load_model(path, custom_objects={"FillMissing": _model.FillMissing})

    def predict_each(models: list, x: dict[str, np.ndarray]) -> np.ndarray:
        return np.column_stack([m.predict(x, batch_size=4096, verbose=0).reshape(-1) for m in models])

    train, validation, test = (read_split(args.dataset, s) for s in ("train", "validation", "test"))
    x_val, y_val = to_model_inputs(validation), labels(validation)
    x_test, y_test = to_model_inputs(test), labels(test)
    days = validation["flight_date"].astype(str).to_numpy()
    # The tree member: gradient boosting of shallow trees, compiled to TensorFlow ops (`trees.py`), beside the
    # networks in every group; its held-out twin (fit on train only) gives its validation predictions.
    found = gbdt_search(train, validation, args.seed, TREE_MEMBER_GRID, TREE_MEMBER_MAX_ITER) \
        if args.tree_member else None  # fmt: skip
    trees = (tree_member(compile_forest(found["model"])), tree_member(compile_forest(found["holdout"]))) \
        if found else None  # fmt: skip
    # Each group's ensemble method is fit and chosen on validation. Validation predictions come from members
    # that never saw validation (the held-out twins when tune refit them). A fresh search and the champion
    # fine-tuned (warm start) then compete at the gate, on the test days: the champion's own training
    # reached into this window's validation week, so validation cannot judge it fairly.
    judged = {}
    for origin, pairs in groups.items():
        holdouts = [load(holdout) for _, holdout in pairs] + ([trees[1]] if trees else [])
        group_members = [load(exported) for exported, _ in pairs] + ([trees[0]] if trees else [])
        member_val = predict_each(holdouts, x_val)
        combiner, method_choice = choose_combiner(args.ensemble_method, y_val, member_val, days)
        group_auc = float(roc_auc_score(y_test, combiner.predict(predict_each(group_members, x_test))))
        judged[origin] = (pairs, holdouts, member_val, combiner, method_choice, group_members, group_auc)
    won = max(judged, key=lambda o: judged[o][6])
    paths, holdouts, member_val, combiner, method_choice, members, _ = judged[won]
    warm_start = {"competed": sorted(judged), "won": won,
                  "test_auc": {o: round(j[6], 6) for o, j in judged.items()},
                  "cv_log_loss": {o: j[4].scores[j[4].chosen] for o, j in judged.items()}}  # fmt: skip
    refit = any(exported != holdout for exported, holdout in paths) or trees is not None
    families = [m.name.removeprefix("flight_delay").lstrip("_") or "mlp" for m in members]  # flight_delay_<family>
    for index, member in enumerate(members):
        member.name = f"member_{index}"  # nested models need distinct names
    member_test = predict_each(members, x_test)
    holdout_test = predict_each(holdouts, x_test) if refit else member_test
    # The calibrator, fit on validation and chosen by its log loss on the validation day left out.
    combined_val = combiner.predict(member_val)
    calibrator, calibration_choice = choose_calibrator(args.calibration, y_val, combined_val, days)
    ensemble = build_ensemble(members, combiner, calibrator)
    in_memory = ensemble.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
    export_dir = work / "export" / "saved_model"
    ensemble.export(str(export_dir), format="tf_saved_model", verbose=False)
    predict = _saved_model_predictor(export_dir)
    exported = predict(x_test)
    parity = float(np.max(np.abs(exported - in_memory)))
    if not parity <= PARITY_TOLERANCE:
        raise ExportMismatch(f"exported SavedModel differs from the ensemble by {parity:.2e} > {PARITY_TOLERANCE}")
    metrics = classification_metrics(y_test, exported, f1_threshold(y_val, calibrator.predict(combined_val)))
    uncalibrated = combiner.predict(member_test)
    uncalibrated_metrics = classification_metrics(y_test, uncalibrated, f1_threshold(y_val, combined_val))
    member_metrics = [{"member": i, "family": families[i],
                       "val_auc": round(float(roc_auc_score(y_val, member_val[:, i])), 6),
                       "test_auc": round(float(roc_auc_score(y_test, member_test[:, i])), 6),
                       "test_auc_before_refit": round(float(roc_auc_score(y_test, holdout_test[:, i])), 6)}
                      for i in range(len(members))]  # fmt: skip
    methods = {name: {"cv_log_loss": score,
                      "test_auc": round(float(roc_auc_score(y_test, fit_combiner(name, y_val, member_val)
                                                            .predict(member_test))), 6)}
               for name, score in method_choice.scores.items()}  # fmt: skip
    gbdt = gbdt_baseline(train, validation, test, args.seed)
    networks = len(paths)  # the networks alone, combined the same way: what the tree member adds
    network_combiner = fit_combiner(combiner.method, y_val, member_val[:, :networks]) if trees else combiner
    network_auc = float(roc_auc_score(y_test, network_combiner.predict(member_test[:, :networks])))
    champion = None
    curves = {"ensemble": exported, "ensemble, uncalibrated": uncalibrated, "gbdt baseline": gbdt["p"]}
    if args.champion:
        champion_dir = download_dir(args.champion, work / "champion")
        champion_p = _predict_saved_model(champion_dir, x_test)
        champion = {"uri": args.champion, "metrics": classification_metrics(y_test, champion_p, metrics["threshold"]),
                    "slices": slice_aucs(test, champion_p)}  # fmt: skip
        curves["champion"] = champion_p
    importance = permutation_importance(predict, x_test, y_test, args.seed)
    # The monitoring reference: the test days' model inputs, labels and the exported model's predictions.
    reference = test[[*MODEL_FEATURES, LABEL_KEY, "flight_date"]].assign(prediction=exported)
    reference.to_parquet(work / "export" / "reference.parquet", index=False)
    report_dir = work / "export" / "report"
    report_dir.mkdir(parents=True)
    summary: dict[str, Any] = {
        "command": "evaluate",
        "dataset": args.dataset,
        "test_rows": len(test),
        "weights": combiner.params.get("weights", []),
        "members": len(members),
        "refit": refit,
        "warm_start": warm_start,
        "exported_members": [str(exported.relative_to(members_dir)) for exported, _ in paths],
        "member_metrics": member_metrics,
        "holdout_ensemble_auc": round(
            float(roc_auc_score(y_test, calibrator.predict(combiner.predict(holdout_test)))), 6
        ),
        "ensemble": {
            "method": combiner.method,
            "requested": args.ensemble_method,
            "params": combiner.params,
            "methods": methods,
        },
        "calibration": {
            "kind": calibrator.kind,
            "requested": args.calibration,
            "params": calibrator.params,
            "cv_log_loss": calibration_choice.scores,
            "ece_before": uncalibrated_metrics["ece"],
            "ece_after": metrics["ece"],
            "auc_before": uncalibrated_metrics["auc"],
        },
        "metrics": metrics,
        "uncalibrated_metrics": uncalibrated_metrics,
        "slices": slice_aucs(test, exported),
        "gbdt_auc": gbdt["auc"],
        "gbdt": {"best": gbdt["best"], "trials": gbdt["trials"], "slices": slice_aucs(test, gbdt["p"])},
        "auc_ratio": metrics["auc"] / gbdt["auc"],
        "tree_member": {"best": found["best"], "trials": found["trials"]} if found else None,
        "network_auc": network_auc,
        "network_auc_ratio": network_auc / gbdt["auc"],
        "importance": importance,
        "export_parity_max_abs_diff": parity,
        "champion": champion,
        "saved_model": f"{args.out.rstrip('/')}/saved_model",
        "report": f"{args.out.rstrip('/')}/report/index.html",
        "reference": f"{args.out.rstrip('/')}/reference.parquet",
    }
    plots = plot_curves(y_test, curves, report_dir)
    plots.append(plot_importance(importance, report_dir))
    write_report(report_dir, summary, plots)
    summary["seconds"] = round(time.monotonic() - started, 1)
    (work / "export" / "evaluate.json").write_text(json.dumps(summary, indent=2))
    upload_dir(work / "export", args.out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("ensemble (%s of %s, calibration %s) AUC %.4f, ECE %.4f (uncalibrated %.4f); GBDT %.4f, ratio %.4f; "
             "the networks alone %.4f", combiner.method, "+".join(families), calibrator.kind, metrics["auc"],
             metrics["ece"], uncalibrated_metrics["ece"], gbdt["auc"], summary["auc_ratio"], network_auc)  # fmt: skip
    return summary
