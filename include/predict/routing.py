"""Where the service sends a flight: the versions `stable` and `canary` point at in `models.config`, and the
share of flights the canary gets (`canary_percent` of the canary's deployment, recorded by the deploy)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from include.core.config import DeployPolicy, Settings
from include.db import deployments, engine
from include.serving.state import read_state


@dataclass(frozen=True)
class Routes:
    labels: dict[str, int] = field(default_factory=dict)
    canary_percent: float = 0.0

    def version(self, arm: str) -> int | None:
        return self.labels.get(arm)


def canary_percent(url: str, model: str, version: int, default: float | None) -> float | None:
    """The share the canary deployment of `version` asked for (the form's or the policy's at the time),
    recorded with its infra validation and its verdict; `default` when neither is recorded."""
    d = deployments
    query = (
        sa.select(d.c.detail["canary_percent"].as_float())
        .where(d.c.model == model, d.c.version == version, d.c.succeeded,
               d.c.action.in_(("infra_validation", "canary")))
        .order_by(d.c.id.desc()).limit(1)
    )  # fmt: skip
    with engine(url).connect() as conn:
        found = conn.execute(query).scalar()
    return default if found is None else float(found)


def read_routes(settings: Settings, default_percent: float) -> Routes:
    state = read_state(settings)
    labels = {k: v for k, v in state.labels.items() if k in ("stable", "canary")}
    if labels.get("canary") is None or labels.get("stable") is None or labels["canary"] == labels["stable"]:
        return Routes({"stable": labels["stable"]} if "stable" in labels else {}, 0.0)
    share = canary_percent(settings.require_database_url(), settings.model_name, labels["canary"], default_percent)
    return Routes(labels, share)


class RouteCache:
    """`read_routes`, trusted for `ttl_s` seconds: a label the deploy moves is followed within that long."""

    def __init__(self, settings: Settings, ttl_s: float) -> None:
        self.settings, self.ttl_s = settings, ttl_s
        self.default_percent = float(DeployPolicy.from_env().canary_percent)
        self._routes: Routes | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> Routes:
        with self._lock:
            if self._routes is None or time.monotonic() - self._read_at >= self.ttl_s:
                self._routes = read_routes(self.settings, self.default_percent)
                self._read_at = time.monotonic()
            return self._routes

    def invalidate(self) -> None:
        with self._lock:
            self._routes = None
