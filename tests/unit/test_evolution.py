"""The evolutionary oracle on a toy objective whose optimum is known, driven as keras-tuner's Tuner
drives an oracle (create_trial → update_trial → end_trial), with no model to train."""

from __future__ import annotations

import keras_tuner as kt
import pytest

from include.trainer.evolution import EvolutionaryOracle

# keras-tuner imports TensorFlow (5 s): in make test, not in make test-fast.
pytestmark = pytest.mark.slow

OPTIMUM = {"x": 7, "y": 2, "z": "c", "w": True}  # one of the 10 × 10 × 4 × 2 = 800 configurations
BUDGET = 120


def _score(v: dict) -> float:
    return -abs(v["x"] - 7) - abs(v["y"] - 2) + (3 if v["z"] == "c" else 0) + (2 if v["w"] else 0)


def _space() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Int("x", 0, 9)
    hp.Int("y", 0, 9)
    hp.Choice("z", ["a", "b", "c", "d"])
    hp.Boolean("w")
    return hp


def _search(oracle: kt.Oracle, tmp_path, budget: int = BUDGET) -> list[dict]:
    oracle._set_project_dir(str(tmp_path), f"toy-{id(oracle)}")
    tried = []
    for _ in range(budget):
        trial = oracle.create_trial("tuner0")
        if trial.status == kt.engine.trial.TrialStatus.STOPPED:
            break
        values = dict(trial.hyperparameters.values)
        oracle.update_trial(trial.trial_id, {"score": _score(values)})
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        tried.append(values)
    return tried


def _evolution(seed: int, budget: int = BUDGET) -> EvolutionaryOracle:
    return EvolutionaryOracle(objective=kt.Objective("score", "max"), max_trials=budget, seed=seed,
                              hyperparameters=_space(), population_size=8, tournament_size=3)  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_evolution_finds_the_known_optimum_within_its_budget(seed, tmp_path) -> None:
    tried = _search(_evolution(seed), tmp_path)
    assert OPTIMUM in tried  # random search is compared in the next test, over 10 seeds


def test_evolution_beats_random_search_across_seeds(tmp_path) -> None:
    found = sum(OPTIMUM in _search(_evolution(seed, 60), tmp_path, 60) for seed in range(10))
    random = sum(OPTIMUM in _search(kt.oracles.RandomSearchOracle(
        objective=kt.Objective("score", "max"), max_trials=60, seed=seed, hyperparameters=_space()), tmp_path, 60)
        for seed in range(10))  # fmt: skip
    assert found >= 6
    assert found > random


def test_the_same_seed_proposes_the_same_trials_and_another_seed_others(tmp_path) -> None:
    first, again, other = (_search(_evolution(s, 40), tmp_path, 40) for s in (3, 3, 4))
    assert first == again
    assert first != other
    assert len({tuple(sorted(v.items())) for v in first}) == len(first)  # no configuration twice


def test_children_come_from_the_population_after_the_random_first_generation(tmp_path) -> None:
    oracle = _evolution(1, 30)
    tried = _search(oracle, tmp_path, 30)
    population = oracle.get_best_trials(8)
    assert len(tried) == 30
    assert [t.score for t in population] == sorted((t.score for t in population), reverse=True)
    # The best of the first generation is never lost (elitism): the population's best is at least as good.
    assert population[0].score >= max(_score(v) for v in tried[:8])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="tournament_size"):
        EvolutionaryOracle(objective=kt.Objective("score", "max"), population_size=4, tournament_size=5)
