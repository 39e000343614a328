"""The train form's tuning budget fields, shared by `nightshift_train` and `nightshift_backtest`
(defaults: the nightly budget, `NIGHTSHIFT_NIGHTLY_*`). Cheap at parse time: Params only."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from include.contract.training import ENSEMBLE_METHODS, TUNERS, WARM_STARTS
from include.core.config import NightlyTraining


def whole_number(default: int, least: int, most: int, title: str, description: str, section: str) -> Param:
    """A form field for a count between `least` and `most`."""
    return Param(default, type="integer", minimum=least, maximum=most, title=title, description=description,
                 section=section)  # fmt: skip


def choice(default: str, choices: tuple[str, ...], title: str, description: str, section: str) -> Param:
    """A form field with one of `choices`, shown as a drop-down."""
    return Param(default, type="string", enum=list(choices), values_display=choices, title=title,
                 description=description, section=section)  # fmt: skip


BUDGET = "Tuning budget"


def tuning_budget_params(budget: NightlyTraining, warm_start: bool = True) -> dict[str, Any]:
    """The search, the ensemble and the seed; `warm_start` leaves that field out (the backtest has no champion)."""
    params = {
        "tuner": choice(budget.tuner, TUNERS, "Tuner", "keras-tuner search strategy.", BUDGET),
        "max_trials": whole_number(
            budget.max_trials, 1, 200, "Max trials", "Trials for bayesian/random search.", BUDGET
        ),
        "epochs": whole_number(
            budget.epochs,
            1,
            200,
            "Epochs",
            "Max epochs per trial (Hyperband's max_epochs); early stopping applies.",
            BUDGET,
        ),
        "ensemble_size": whole_number(
            budget.ensemble_size, 1, 10, "Ensemble size", "Best configurations retrained and averaged.", BUDGET
        ),
        "ensemble_method": choice(
            budget.ensemble_method,
            ENSEMBLE_METHODS,
            "Ensemble method",
            "How the members combine into one probability; auto picks by validation log loss.",
            BUDGET,
        ),
        "warm_start": choice(
            budget.warm_start,
            WARM_STARTS,
            "Warm start",
            "Fine-tune the production model's members on this window, alone or against a fresh search.",
            BUDGET,
        ),
        "tree_member": Param(
            budget.tree_member,
            type="boolean",
            title="Tree member",
            description="Add gradient boosting, compiled to TensorFlow ops in the one SavedModel, to the members.",
            section=BUDGET,
        ),
        "seed": whole_number(budget.seed, 0, 2**31 - 1, "Seed", "Same data + same seed = same metrics.", BUDGET),
    }
    if not warm_start:
        del params["warm_start"]
    return params
