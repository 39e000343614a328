"""What serving holds for the model: the versions `models.config` loads and where its labels point.

Read by the ML Ops view and the monitor, written only by the deploy steps (under their lock).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa

from include.core.config import Settings
from include.db import deployments, engine
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


def rollback_target(url: str, model: str, stable: int) -> int | None:
    """The version `stable` pointed at before `stable`'s last successful promotion: what a rollback restores."""
    d = deployments
    query = (
        sa.select(d.c.previous_stable_version)
        .where(d.c.model == model, d.c.version == stable, d.c.succeeded, d.c.action == "promote")
        .order_by(d.c.id.desc()).limit(1)
    )  # fmt: skip
    with engine(url).connect() as conn:
        return conn.execute(query).scalar()
