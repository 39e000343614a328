"""How the members' probabilities become one, and how that one becomes a calibrated probability.

Both are fit on the validation split and exported inside the ONE SavedModel (`model.build_ensemble`):

* ensemble methods: weighted averaging (convex weights minimizing log loss), soft voting (the plain
  mean), majority voting (the share of members whose probability reaches its own F1 threshold), and
  stacking (a logistic meta-learner on the members' logits);
* calibrators: none, Platt scaling (a logistic map of the logit) and a monotone piecewise-linear map
  (isotonic regression reduced to at most `KNOTS` knots).

`auto` chooses each by its cross-fitted validation log loss: leave one validation day out, fit on the
other days, score the day left out. A method fit on validation is never judged on the rows it was fit
on.

What is fit on validation is its *shape*; the *level* (the mean predicted delay rate) stays the
members', learned from the training split's 60 days. One week's delay rate says little about the
next: in the demo window the validation week's rate was 0.313 and the test week's 0.132, and a
calibrator or meta-learner that took the validation week's level raised the test ECE from 0.08 to
0.20. So stacking's intercept and the calibrators are shifted in logit space (`level_shift`) until
their mean prediction on validation equals the members' own. numpy, scipy and scikit-learn only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from include.contract.training import CALIBRATORS, METHODS

KNOTS = 16
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def level_shift(z: np.ndarray, target_mean: float) -> float:
    """The δ for which mean(sigmoid(z + δ)) equals `target_mean`: a level change that keeps every rank.
    Logits so far apart that no δ within ±20 reaches the level (a member that separates validation
    almost perfectly, under a near-unregularized Platt) get the bracket widened; if none reaches it
    even then, the level stays as fit (δ = 0)."""
    from scipy.optimize import brentq

    target = float(np.clip(target_mean, 1e-4, 1 - 1e-4))

    def gap(d: float) -> float:
        return float(_sigmoid(z + d).mean()) - target

    for reach in (20.0, 200.0, 2000.0):
        if gap(-reach) * gap(reach) < 0:
            return float(brentq(gap, -reach, reach, xtol=1e-10))
    return 0.0


def f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut that maximizes F1."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def vote_cut(y: np.ndarray, p: np.ndarray) -> float:
    """A member's voting cut: its F1 threshold moved halfway down to the next lower prediction. The
    threshold itself is one of the predictions, and a float32 graph may put that row a rounding error
    below it, flipping its vote; halfway, no fitted row is within rounding of the cut."""
    cut = f1_threshold(y, p)
    below = p[p < cut]
    return float((cut + below.max()) / 2) if below.size else cut


@dataclass(frozen=True)
class Combiner:
    """One fitted ensemble method; `params` is what its Keras layer needs (and what the report shows)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def predict(self, member_p: np.ndarray) -> np.ndarray:
        if self.method == "averaging":
            return member_p @ np.asarray(self.params["weights"])
        if self.method == "soft_voting":
            return member_p.mean(axis=1)
        if self.method == "majority_voting":
            return (member_p >= np.asarray(self.params["thresholds"])).mean(axis=1).astype(member_p.dtype)
        if self.method == "stacking":
            return _sigmoid(logit(member_p) @ np.asarray(self.params["coef"]) + self.params["intercept"])
        raise ValueError(f"unknown ensemble method {self.method!r}; choose one of auto, {', '.join(METHODS)}")


def _averaging_weights(y: np.ndarray, member_p: np.ndarray) -> list[float]:
    """Convex weights minimizing log loss (softmax-parametrized)."""
    from scipy.optimize import minimize

    k = member_p.shape[1]
    if k == 1:
        return [1.0]

    def loss(logits: np.ndarray) -> float:
        w = np.exp(logits - logits.max())
        return log_loss(y, member_p @ (w / w.sum()))

    result = minimize(loss, np.zeros(k), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    w = np.exp(result.x - result.x.max())
    return [round(float(v), 6) for v in w / w.sum()]


def fit_combiner(method: str, y: np.ndarray, member_p: np.ndarray) -> Combiner:
    if method == "averaging":
        return Combiner(method, {"weights": _averaging_weights(y, member_p)})
    if method == "soft_voting":
        return Combiner(method, {"weights": [round(1.0 / member_p.shape[1], 6)] * member_p.shape[1]})
    if method == "majority_voting":
        return Combiner(method, {"thresholds": [vote_cut(y, member_p[:, i]) for i in range(member_p.shape[1])]})
    if method == "stacking":
        from sklearn.linear_model import LogisticRegression

        meta = LogisticRegression(C=1.0, max_iter=1000).fit(logit(member_p), y)
        z = logit(member_p) @ meta.coef_[0] + meta.intercept_[0]
        shift = level_shift(z, float(member_p.mean()))  # the members' level, not validation's
        return Combiner(method, {"coef": [float(c) for c in meta.coef_[0]],
                                 "intercept": float(meta.intercept_[0] + shift), "level_shift": shift})  # fmt: skip
    raise ValueError(f"unknown ensemble method {method!r}; choose one of auto, {', '.join(METHODS)}")


@dataclass(frozen=True)
class Calibrator:
    """A monotone map of the ensemble's probability. `platt`: sigmoid(a · logit(p) + b); `piecewise`:
    linear between knots (x, y), flat outside them."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def predict(self, p: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return p
        if self.kind == "platt":
            return _sigmoid(self.params["a"] * logit(p) + self.params["b"]).astype(p.dtype)
        if self.kind == "piecewise":
            return np.interp(p, self.params["x"], self.params["y"]).astype(p.dtype)
        raise ValueError(f"unknown calibrator {self.kind!r}; choose one of auto, {', '.join(CALIBRATORS)}")


def fit_calibrator(kind: str, y: np.ndarray, p: np.ndarray) -> Calibrator:
    if kind == "none":
        return Calibrator(kind)
    if kind == "platt":
        from sklearn.linear_model import LogisticRegression

        platt = LogisticRegression(C=1e4, max_iter=1000).fit(logit(p).reshape(-1, 1), y)
        a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        shift = level_shift(a * logit(p) + b, float(p.mean()))  # the members' level, not validation's
        return Calibrator(kind, {"a": a, "b": b + shift, "level_shift": shift})
    if kind == "piecewise":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(p, y)
        x = np.unique(np.quantile(p, np.linspace(0.0, 1.0, KNOTS)))
        fitted = np.clip(np.maximum.accumulate(iso.predict(x)), EPS, 1 - EPS)
        # Shift the knots' values (in logit space, so they stay monotone) to the members' level.
        from scipy.optimize import brentq

        def level(d: float) -> float:
            return float(np.interp(p, x, _sigmoid(logit(fitted) + d)).mean()) - float(p.mean())

        shift = float(brentq(level, -20.0, 20.0, xtol=1e-10))
        fitted = _sigmoid(logit(fitted) + shift)
        return Calibrator(kind, {"x": [float(v) for v in x], "y": [float(v) for v in fitted], "level_shift": shift})
    raise ValueError(f"unknown calibrator {kind!r}; choose one of auto, {', '.join(CALIBRATORS)}")


def _folds(groups: np.ndarray) -> list[np.ndarray]:
    """Row masks, one per group (validation day) left out; one fold per row block if only one group."""
    values = np.unique(groups)
    if len(values) >= 2:
        return [groups == v for v in values]
    blocks = np.array_split(np.arange(len(groups)), 5)
    return [np.isin(np.arange(len(groups)), b) for b in blocks]


def cross_fitted_log_loss(fit, y: np.ndarray, x: np.ndarray, groups: np.ndarray) -> float:
    """Log loss of `fit(y, x).predict(x)` on each day left out, over all of validation."""
    p = np.empty(len(y), dtype="float64")
    for held in _folds(groups):
        model = fit(y[~held], x[~held])
        p[held] = model.predict(x[held])
    return log_loss(y, p)


@dataclass
class Choice:
    """What was chosen, and the cross-fitted validation log loss of every candidate."""

    chosen: str
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_combiner(requested: str, y: np.ndarray, member_p: np.ndarray, groups: np.ndarray) -> tuple[Combiner, Choice]:
    """`requested` itself, or with `auto` the method of least cross-fitted log loss; fit on all of validation."""
    if requested != "auto" and requested not in METHODS:
        raise ValueError(f"unknown ensemble method {requested!r}; choose one of auto, {', '.join(METHODS)}")
    candidates = METHODS if member_p.shape[1] > 1 else ("averaging",)
    scores = {m: round(cross_fitted_log_loss(lambda yy, xx, m=m: fit_combiner(m, yy, xx), y, member_p, groups), 6)
              for m in candidates}  # fmt: skip
    chosen = min(scores, key=scores.__getitem__) if requested == "auto" else requested
    if member_p.shape[1] == 1:
        chosen = "averaging"  # one member: every method is that member
    return fit_combiner(chosen, y, member_p), Choice(chosen, scores)


def choose_calibrator(requested: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> tuple[Calibrator, Choice]:
    if requested != "auto" and requested not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {requested!r}; choose one of auto, {', '.join(CALIBRATORS)}")
    scores = {k: round(cross_fitted_log_loss(lambda yy, xx, k=k: fit_calibrator(k, yy, xx), y, p, groups), 6)
              for k in CALIBRATORS}  # fmt: skip
    chosen = min(scores, key=scores.__getitem__) if requested == "auto" else requested
    return fit_calibrator(chosen, y, p), Choice(chosen, scores)
