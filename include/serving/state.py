"""What serving holds for the model: the versions `models.config` loads and where its labels point.

Read by the ML Ops view and the monitor, written only by the deploy steps (under their lock).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from include.core.config import Settings
from include.serving.config import ModelEntry, read_models_config, write_models_config

log = logging.getLogger(__name__)


@dataclass
class ServingState:
    """The served model's entry in `models.config`."""

    versions: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def stable(self) -> int | None:
        return self.labels.get("stable")

    @property
    def canary(self) -> int | None:
        return self.labels.get("canary")


def read_state(settings: Settings) -> ServingState:
    if not settings.models_config.exists():
        return ServingState()
    for entry in read_models_config(settings.models_config):
        if entry.name == settings.model_name:
            return ServingState(sorted(entry.versions), dict(entry.labels))
    return ServingState()


def write_state(settings: Settings, state: ServingState) -> None:
    """Replace the model's entry, keeping any other model's, atomically (TF Serving polls the file)."""
    others = (
        [e for e in read_models_config(settings.models_config) if e.name != settings.model_name]
        if settings.models_config.exists() else []
    )  # fmt: skip
    settings.models_config.parent.mkdir(parents=True, exist_ok=True)
    mine = ModelEntry(settings.model_name, settings.serving_model_base, sorted(set(state.versions)), state.labels)
    write_models_config(settings.models_config, [*others, mine])
    log.info("models.config: versions %s, labels %s", sorted(set(state.versions)), state.labels)
