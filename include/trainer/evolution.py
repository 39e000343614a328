"""An evolutionary (genetic) search, as a keras-tuner `Oracle`: a `(μ + λ)` steady-state algorithm.

* **Population:** the best `population_size` completed trials. The first `population_size` trials are
  drawn at random; every later trial is a child of that population. A trial joins the population only by
  beating one of its members, so the best configurations found are never lost (elitism).
* **Selection:** each parent is the best of `tournament_size` members drawn at random (a tournament).
* **Crossover:** uniform: each hyperparameter comes from one parent or the other, evenly.
* **Mutation:** each hyperparameter is drawn afresh from its range with probability `mutation_rate`.
* **Seeded:** trial k's draws come from `random.Random(f"{seed}:{k}")`, so a rerun with the same seed
  and the same scores proposes the same trials, and a reloaded search goes on where it stopped.

A child already tried is bred again (up to 20 times), then replaced by a random configuration; the
search stops when the space holds no untried configuration.
"""

from __future__ import annotations

import random
from typing import Any

import keras_tuner as kt
from keras_tuner.src.engine import trial as trial_module

MAX_BREEDS = 20


class EvolutionaryOracle(kt.Oracle):
    def __init__(self, objective: Any = None, max_trials: int = 10, population_size: int = 6,
                 tournament_size: int = 3, mutation_rate: float = 0.2, seed: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        if population_size < 2 or not 1 <= tournament_size <= population_size or not 0 <= mutation_rate <= 1:
            raise ValueError("population_size >= 2, 1 <= tournament_size <= population_size, 0 <= mutation_rate <= 1")
        super().__init__(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
        self.population_size, self.tournament_size, self.mutation_rate = population_size, tournament_size, mutation_rate

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:{len(self.trials)}")
        population = self.get_best_trials(self.population_size)
        values = None
        if len(population) >= self.population_size:
            for _ in range(MAX_BREEDS):
                child = self._child(population, rng)
                if not self._duplicate(child):
                    values = child
                    break
        if values is None:
            self._seed_state = rng.randrange(2**31)  # the random draw is seeded per trial too
            values = self._random_values()
        if values is None:
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        return {"status": trial_module.TrialStatus.RUNNING, "values": values}

    def _tournament(self, population: list[Any], rng: random.Random) -> dict[str, Any]:
        # `population` is sorted best first: the winner is the drawn member of the lowest rank.
        return population[min(rng.sample(range(len(population)), self.tournament_size))].hyperparameters.values

    def _child(self, population: list[Any], rng: random.Random) -> dict[str, Any]:
        mother, father = self._tournament(population, rng), self._tournament(population, rng)
        hps = kt.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if not hps.is_active(hp):
                continue
            inherited = [v[hp.name] for v in (mother, father) if hp.name in v]
            if inherited and rng.random() >= self.mutation_rate:
                hps.values[hp.name] = rng.choice(inherited)
            else:
                hps.values[hp.name] = hp.random_sample(rng.randrange(2**31))
        return hps.values

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.update(population_size=self.population_size, tournament_size=self.tournament_size,
                     mutation_rate=self.mutation_rate)  # fmt: skip
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.population_size = state["population_size"]
        self.tournament_size = state["tournament_size"]
        self.mutation_rate = state["mutation_rate"]
