"""The train form's tuning budget fields, shared by `nightshift_train` and `nightshift_backtest`
(defaults: the nightly budget, `NIGHTSHIFT_NIGHTLY_*`). Cheap at parse time: Params only."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from include.contract.training import ENSEMBLE_METHODS, TUNERS, WARM_STARTS
from include.core.config import NightlyTraining


def tuning_budget_params(budget: NightlyTraining, warm_start: bool = True) -> dict[str, Any]:
    """The search, the ensemble and the seed; `warm_start` leaves that field out (the backtest has no champion)."""
    params = {
        "tuner": Param(
            budget.tuner,
            type="string",
            enum=list(TUNERS),
            values_display=TUNERS,
            title="Tuner",
            description="keras-tuner search strategy.",
            section="Tuning budget",
        ),
        "max_trials": Param(
            budget.max_trials,
            type="integer",
            minimum=1,
            maximum=200,
            title="Max trials",
            description="Trials for bayesian/random search.",
            section="Tuning budget",
        ),
        "epochs": Param(
            budget.epochs,
            type="integer",
            minimum=1,
            maximum=200,
            title="Epochs",
            description="Max epochs per trial (Hyperband's max_epochs); early stopping applies.",
            section="Tuning budget",
        ),
        "ensemble_size": Param(
            budget.ensemble_size,
            type="integer",
            minimum=1,
            maximum=10,
            title="Ensemble size",
            description="Best configurations retrained and averaged.",
            section="Tuning budget",
        ),
        "ensemble_method": Param(
            budget.ensemble_method,
            type="string",
            enum=list(ENSEMBLE_METHODS),
            values_display=ENSEMBLE_METHODS,
            title="Ensemble method",
            description="How the members combine into one probability; auto picks by validation log loss.",
            section="Tuning budget",
        ),
        "warm_start": Param(
            budget.warm_start,
            type="string",
            enum=list(WARM_STARTS),
            values_display=WARM_STARTS,
            title="Warm start",
            description="Fine-tune the production model's members on this window, alone or against a fresh search.",
            section="Tuning budget",
        ),
        "seed": Param(
            budget.seed,
            type="integer",
            minimum=0,
            maximum=2**31 - 1,
            title="Seed",
            description="Same data + same seed = same metrics.",
            section="Tuning budget",
        ),
    }
    if not warm_start:
        del params["warm_start"]
    return params
