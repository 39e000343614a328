"""The training image's choices: its search strategies (one list for the trainer's `--tuner`, the train
form's enum and the nightly budget's check, `NIGHTSHIFT_NIGHTLY_TUNER`), and the model families the
search picks members from (`include/trainer/model.py`)."""

from __future__ import annotations

TUNERS: dict[str, str] = {
    "hyperband": "Hyperband: many short trials, the best trained longer",
    "bayesian": "Bayesian optimisation: each trial learns from the last (uses Max trials)",
    "random": "Random search (uses Max trials)",
    "grid": "Grid search: every combination in order, up to Max trials (shards split the grid)",
    "evolution": "Evolutionary search: a population bred by tournament, crossover and mutation (uses Max trials)",
}

# Every family is a Keras network on the same raw inputs, so any mix of them is still ONE SavedModel.
FAMILIES = ("mlp", "wide_deep", "dcn")

# How members combine (`include/trainer/combine.py`); the train form's `ensemble_method` adds `auto`.
METHODS: dict[str, str] = {
    "averaging": "Weighted averaging: convex weights fit on validation",
    "soft_voting": "Soft voting: the plain mean of the members' probabilities",
    "majority_voting": "Majority voting: the share of members above their own threshold",
    "stacking": "Stacking: a logistic meta-learner on the members' logits",
}
ENSEMBLE_METHODS: dict[str, str] = {"auto": "Auto: the least log loss on each validation day left out", **METHODS}
CALIBRATORS = ("none", "platt", "piecewise")
# The tree member (`include/trainer/trees.py`): gradient boosting compiled to TensorFlow ops, its trees at
# most this deep (a complete tree of depth 10 has 1,023 splits; each row's walk takes 10 steps).
TREE_MAX_DEPTH = 10
# Warm start: fine-tune the production model's members on the new window (`include/trainer/warm.py`).
WARM_STARTS: dict[str, str] = {
    "off": "Off: a fresh search only",
    "champion": "Champion: fine-tune the production model's members, no fresh search",
    "both": "Both: a fresh search and the fine-tuned champion compete on validation",
}
