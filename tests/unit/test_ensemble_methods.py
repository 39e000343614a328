"""The ensemble methods and calibrators of `include/trainer/combine.py`, on probabilities whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from include.contract.metrics import expected_calibration_error
from include.contract.training import CALIBRATORS, METHODS
from include.trainer.combine import (
    choose_calibrator,
    choose_combiner,
    fit_calibrator,
    fit_combiner,
    level_shift,
    logit,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from a known probability, and seven 'days' of rows."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.2, size=n)
    y = (rng.random(n) < _sigmoid(z)).astype(float)
    days = np.repeat(np.arange(7), -(-n // 7))[:n].astype(str)
    return z, y, days


def test_auto_calibration_turns_an_overconfident_model_into_probabilities_on_new_rows() -> None:
    z, y, days = _world(8000, seed=1)
    z_new, y_new, _ = _world(8000, seed=2)
    # Ranks perfectly and has the right mean delay rate, but is far too sure of itself.
    offset = level_shift(2.5 * z, float(_sigmoid(z).mean())) - level_shift(z, float(_sigmoid(z).mean()))

    def model(zz: np.ndarray) -> np.ndarray:
        return _sigmoid(2.5 * zz + offset)

    assert expected_calibration_error(y_new, model(z_new)) > 0.05
    calibrator, choice = choose_calibrator("auto", y, model(z), days)
    assert choice.chosen in ("platt", "piecewise")
    assert choice.scores[choice.chosen] < choice.scores["none"]
    calibrated = calibrator.predict(model(z_new))
    assert expected_calibration_error(y_new, calibrated) <= 0.03
    assert roc_auc_score(y_new, calibrated) >= roc_auc_score(y_new, model(z_new)) - 1e-9  # monotone: ranks kept


@pytest.mark.parametrize("kind", ["platt", "piecewise"])
def test_a_calibrator_fit_on_a_week_of_other_delay_rates_keeps_the_members_level(kind: str) -> None:
    z, _, _ = _world(6000, seed=8)
    rng = np.random.default_rng(9)
    y_busy_week = (rng.random(len(z)) < _sigmoid(z + 1.0)).astype(float)  # a week far later than usual
    p = _sigmoid(1.5 * z)
    calibrator = fit_calibrator(kind, y_busy_week, p)
    assert abs(calibrator.params["level_shift"]) > 0.1  # it had to pull validation's level back
    assert calibrator.predict(p).mean() == pytest.approx(p.mean(), abs=1e-6)
    stacked = fit_combiner("stacking", y_busy_week, np.column_stack([p, _sigmoid(z)]))
    assert stacked.predict(np.column_stack([p, _sigmoid(z)])).mean() == pytest.approx(
        np.column_stack([p, _sigmoid(z)]).mean(), abs=1e-6
    )


@pytest.mark.parametrize("kind", CALIBRATORS)
def test_every_calibrator_is_monotone_and_stays_inside_zero_one(kind: str) -> None:
    z, y, _ = _world(3000, seed=3)
    calibrator = fit_calibrator(kind, y, _sigmoid(1.7 * z))
    grid = np.linspace(0.0, 1.0, 501)
    out = calibrator.predict(grid)
    assert np.all(np.diff(out) >= -1e-12)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_auto_picks_stacking_when_the_members_need_rescaling_and_keeps_a_named_method() -> None:
    z, y, days = _world(6000, seed=4)
    rng = np.random.default_rng(5)
    good = _sigmoid(3.0 * z + 2.0)  # informative, badly scaled
    noise = _sigmoid(rng.normal(size=len(z)))  # uninformative
    members = np.column_stack([good, noise])
    combiner, choice = choose_combiner("auto", y, members, days)
    assert set(choice.scores) == set(METHODS)
    assert choice.chosen == "stacking"
    assert combiner.params["coef"][0] > 0.2
    assert abs(combiner.params["coef"][1]) < 0.1
    assert choice.scores["stacking"] < min(v for k, v in choice.scores.items() if k != "stacking")
    # Weighted averaging cannot rescale: it can only temper the sure member with the noise.
    averaging = fit_combiner("averaging", y, members)
    assert averaging.params["weights"][0] > averaging.params["weights"][1]
    assert choose_combiner("soft_voting", y, members, days)[0].method == "soft_voting"


def test_voting_is_the_mean_or_the_share_of_members_above_their_threshold() -> None:
    z, y, _ = _world(2000, seed=6)
    members = np.column_stack([_sigmoid(z), _sigmoid(z + 0.5), _sigmoid(z - 0.5)])
    assert np.allclose(fit_combiner("soft_voting", y, members).predict(members), members.mean(axis=1))
    majority = fit_combiner("majority_voting", y, members)
    votes = majority.predict(members)
    assert set(np.unique(votes)) <= {0.0, 1 / 3, 2 / 3, 1.0}
    expected = (members >= np.asarray(majority.params["thresholds"])).mean(axis=1)
    assert np.allclose(votes, expected)


def test_one_member_is_itself_whatever_was_asked() -> None:
    z, y, days = _world(1000, seed=7)
    member = _sigmoid(z).reshape(-1, 1)
    combiner, choice = choose_combiner("stacking", y, member, days)
    assert combiner.method == "averaging"
    assert choice.chosen == "averaging"
    assert np.allclose(combiner.predict(member), member[:, 0])


def test_an_unknown_method_or_calibrator_is_refused_by_name() -> None:
    y, p, days = np.array([0.0, 1.0]), np.array([[0.2, 0.3], [0.7, 0.8]]), np.array(["a", "b"])
    with pytest.raises(ValueError, match="unknown ensemble method 'bagging'"):
        choose_combiner("bagging", y, p, days)
    with pytest.raises(ValueError, match="unknown calibrator 'beta'"):
        choose_calibrator("beta", y, p[:, 0], days)
    assert np.allclose(logit(np.array([0.5])), 0.0)


def test_a_voting_cut_sits_between_predictions_so_rounding_cannot_flip_a_fitted_vote() -> None:
    from include.trainer.combine import f1_threshold, vote_cut

    rng = np.random.default_rng(5)
    p = rng.random(500).astype(np.float32).round(2)  # many ties, as a small member's outputs have
    y = (rng.random(500) < p).astype(int)
    cut = vote_cut(y, p)
    assert cut not in set(p.tolist())
    assert f1_threshold(y, p) > cut > p[p < f1_threshold(y, p)].max()
    # The same members vote the same either side of float32 rounding of any fitted row.
    nudged = np.nextafter(p, np.float32(0))
    assert ((p >= cut) == (nudged >= cut)).all()


def test_a_level_out_of_reach_of_the_first_bracket_is_found_or_left_as_fit() -> None:
    """Logits far from the level: before, `level_shift` raised ("f(a) and f(b) must have different signs")
    for any level more than 20 logits away, as a near-perfect tree member's Platt fit gave in the
    warm-start test's tiny dataset."""
    z = np.random.default_rng(0).normal(size=1000) - 30.0  # every probability about 1e-13
    shift = level_shift(z, 0.3)
    assert 20.0 < shift < 40.0
    assert float(_sigmoid(z + shift).mean()) == pytest.approx(0.3, abs=1e-6)
    saturated = np.concatenate([np.full(60, -1e5), np.full(40, 1e5)])  # no shift within ±2000 moves the mean
    assert level_shift(saturated, 0.3) == 0.0  # the level stays as fit
