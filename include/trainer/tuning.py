"""`tune`: keras-tuner searches the hyperparameters on train/validation, then the best
`ensemble_size` configurations are retrained as the ensemble's members."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from include.contract.training import FAMILIES, TUNERS
from include.trainer.io import read_split, seed_everything, upload_dir

log = logging.getLogger("nightshift.trainer")

BATCH_SIZE = 512
# Grid search with shards: each shard searches the whole grid but for its share of this hyperparameter.
GRID_SPLIT = "units"


def _hyperparameters(hp) -> dict[str, Any]:
    return {
        "family": hp.Choice("family", list(FAMILIES)),
        "units": hp.Int("units", 32, 128, step=32),
        "layers": hp.Int("layers", 1, 3),
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.1),
        "embedding_dim": hp.Choice("embedding_dim", [4, 8, 16]),
        "learning_rate": hp.Choice("learning_rate", [1e-3, 3e-3, 1e-2]),
    }


def grid_share(shard: int, shards: int):
    """The part of the grid shard `shard` of `shards` searches: GRID_SPLIT's values dealt out in turn
    (pre-registered, so the model's own `hp.Int(GRID_SPLIT, …)` takes them); None without shards."""
    import keras_tuner as kt

    if shards <= 1:
        return None
    values = kt.HyperParameters()
    options = list(_hyperparameters_space()[GRID_SPLIT].values)
    if shards > len(options):
        raise SystemExit(f"grid search splits {GRID_SPLIT!r} ({len(options)} values) over at most "
                         f"{len(options)} shards, not {shards}")  # fmt: skip
    values.Choice(GRID_SPLIT, options[shard::shards])
    return values


def _hyperparameters_space() -> dict[str, Any]:
    import keras_tuner as kt

    hp = kt.HyperParameters()
    _hyperparameters(hp)
    return {h.name: h for h in hp.space}


def make_tuner(kind: str, stats, max_trials: int, epochs: int, seed: int, directory: Path, shard: int = 0,
               shards: int = 1):  # fmt: skip
    import keras_tuner as kt

    from include.trainer.evolution import EvolutionaryOracle
    from include.trainer.model import build_model

    def build(hp):
        return build_model(stats, _hyperparameters(hp))

    objective = kt.Objective("val_auc", direction="max")
    common = {"objective": objective, "seed": seed, "directory": str(directory), "project_name": "search",
              "overwrite": True}  # fmt: skip
    if kind == "hyperband":
        return kt.Hyperband(
            build, max_epochs=epochs, factor=3, hyperband_iterations=1, max_consecutive_failed_trials=2, **common
        )
    if kind == "bayesian":
        return kt.BayesianOptimization(build, max_trials=max_trials, **common)
    if kind == "random":
        return kt.RandomSearch(build, max_trials=max_trials, **common)
    if kind == "grid":
        return kt.GridSearch(build, max_trials=max_trials, hyperparameters=grid_share(shard, shards), **common)
    if kind == "evolution":
        oracle = EvolutionaryOracle(objective=objective, max_trials=max_trials, seed=seed,
                                    population_size=max(2, min(6, max_trials // 2)),
                                    tournament_size=2)  # fmt: skip
        return kt.Tuner(oracle=oracle, hypermodel=build, directory=str(directory), project_name="search",
                        overwrite=True)  # fmt: skip
    raise SystemExit(f"unknown tuner {kind!r}; choose one of {', '.join(TUNERS)}")


def _early_stopping():
    import keras

    return keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=2, restore_best_weights=True)


def _search_members(args: argparse.Namespace, seed: int, train, validation, stats, work: Path):
    """The keras-tuner search, then its best `ensemble_size` configurations retrained as members (each
    refit on train + validation with `--refit`); returns (trials, members) and writes member_<i>.keras."""
    import keras
    import numpy as np
    import pandas as pd

    from include.contract.inputs import to_model_inputs
    from include.trainer.model import FeatureStats, build_model, labels

    x_train, y_train = to_model_inputs(train), labels(train)
    x_val, y_val = to_model_inputs(validation), labels(validation)
    tuner = make_tuner(args.tuner, stats, args.max_trials, args.epochs, seed, work / "tuner", args.shard, args.shards)
    tuner.search(
        x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=BATCH_SIZE,
        callbacks=[_early_stopping(), keras.callbacks.TensorBoard(str(work / "tensorboard" / "search"))], verbose=0,
    )  # fmt: skip
    trials = []
    for trial in tuner.oracle.trials.values():
        trials.append({"trial_id": trial.trial_id, "status": str(trial.status), "score": trial.score,
                       **trial.hyperparameters.values})  # fmt: skip
    pd.DataFrame(trials).sort_values("score", ascending=False).to_csv(work / "trials.csv", index=False)
    best = tuner.get_best_hyperparameters(num_trials=args.ensemble_size)
    both = pd.concat([train, validation], ignore_index=True) if args.refit else None
    members = []
    for index, hp in enumerate(best):
        keras.utils.set_random_seed(seed + index)
        params = _hyperparameters(hp)
        model = build_model(stats, params)
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=BATCH_SIZE,
            callbacks=[_early_stopping(), keras.callbacks.TensorBoard(str(work / "tensorboard" / f"member_{index}"))],
            verbose=0,
        )  # fmt: skip
        best_epochs = int(np.argmax(history.history["val_auc"])) + 1
        val_auc = round(float(max(history.history["val_auc"])), 6)
        member = {"index": index, "hyperparameters": params, "val_auc": val_auc,
                  "epochs": len(history.history["val_auc"]), "best_epochs": best_epochs}  # fmt: skip
        if both is None:
            model.save(work / f"member_{index}.keras")
        else:
            # As a user of GBDT would: the configuration and its epoch count chosen on validation, then the
            # weights learned on train + validation, the most recent week included. The held-out member
            # (trained on train only) is kept: evaluate fits the ensemble method and calibrator on its
            # validation predictions, which the refit member has seen.
            model.save(work / f"member_{index}.holdout.keras")
            keras.utils.set_random_seed(seed + index)
            refit = build_model(FeatureStats.from_frame(both), params)
            refit.fit(to_model_inputs(both), labels(both), epochs=best_epochs, batch_size=BATCH_SIZE, verbose=0)
            refit.save(work / f"member_{index}.keras")
            member["refit_rows"] = len(both)
        members.append(member)
        log.info("member %d: val_auc %.4f after %d epoch(s) with %s%s", index, member["val_auc"], best_epochs, params,
                 f"; refit on train + validation ({len(both)} rows)" if both is not None else "")  # fmt: skip
    return trials, members


def tune(args: argparse.Namespace) -> dict[str, Any]:
    from include.trainer.model import FeatureStats
    from include.trainer.warm import fine_tune

    started = time.monotonic()
    if not 0 <= args.shard < args.shards:
        raise SystemExit(f"--shard {args.shard} is outside 0…{args.shards - 1}")
    # Shards search the same space from different seeds; evaluate pools their members.
    seed = args.seed + 1000 * args.shard
    out = f"{args.out.rstrip('/')}/shard_{args.shard}" if args.shards > 1 else args.out
    seed_everything(seed)
    train, validation = read_split(args.dataset, "train"), read_split(args.dataset, "validation")
    stats = FeatureStats.from_frame(train)
    work = Path(tempfile.mkdtemp(prefix="nightshift-tune-"))
    # Warm start (shard 0 only): the champion's members fine-tuned on this window; with `champion` they
    # are the only candidates, with `both` a fresh search competes with them in evaluate.
    warm = args.warm_start != "off" and bool(args.warm_from) and args.shard == 0
    if args.warm_start != "off" and not args.warm_from:
        log.info("warm start %s asked, but there is no production model yet: a fresh search only", args.warm_start)
    warm_members = fine_tune(args.warm_from, train, validation, args.epochs, seed, args.refit, work,
                             BATCH_SIZE) if warm else []  # fmt: skip
    search = not warm_members or args.warm_start == "both"
    trials, members = _search_members(args, seed, train, validation, stats, work) if search else ([], [])
    (work / "stats.json").write_text(json.dumps(stats.to_dict()))
    summary = {
        "command": "tune", "tuner": args.tuner, "seed": seed, "shard": args.shard, "shards": args.shards,
        "refit": bool(args.refit), "warm_start": args.warm_start, "warm_from": args.warm_from or None,
        "warm_members": warm_members,
        "trials": len(trials), "members": members, "out": out, "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    (work / "tune.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work / "tuner", ignore_errors=True)  # checkpoints of every trial: large, not needed
    upload_dir(work, out)
    shutil.rmtree(work, ignore_errors=True)
    return summary
