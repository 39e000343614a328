"""Feast's online store, read as a KServe Feast transformer does: the model's looked-up inputs for a flight's
origin, carrier, route and plane, through the versioned FeatureService that training joined offline."""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

from include.contract.features import ENTITY_JOIN_KEYS, FEATURE_SERVICE, FEATURE_VIEWS

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

    from include.core.config import Settings


def open_online_store(settings: Settings, max_connections: int = 8) -> FeatureStore:
    """The feature store with a pool of online-store connections, for a threaded server."""
    from include.core.feast import open_store

    store = open_store(settings)
    online = store.config.online_store
    if getattr(online, "type", "") == "postgres":
        online.conn_type = "pool"
        online.max_conn = max_connections
    return store


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class OnlineFeatures:
    """The online store and the FeatureService, resolved once and again every `refresh_s` (a `feast apply`
    changes it; reading it from the SQL registry on every request cost 8 ms)."""

    def __init__(self, store: FeatureStore, refresh_s: float = 60.0) -> None:
        self.store, self.refresh_s = store, refresh_s
        self._service: Any = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def service(self) -> Any:
        with self._lock:
            if self._service is None or time.monotonic() - self._read_at >= self.refresh_s:
                self._service = self.store.get_feature_service(FEATURE_SERVICE)
                self._read_at = time.monotonic()
            return self._service

    def warm(self) -> None:
        """Load the registry and open the store's connections before the first caller waits for them (cold,
        the first requests took seconds)."""
        self.lookup([{"origin": "JFK", "carrier": "B6", "route": "JFK-BOS", "tailnum": ""}])

    def lookup(self, entities: list[dict[str, Any]]) -> list[list[str]]:
        """Add every Feast feature to each entity record (NaN where the store has none), as of now in the
        online store; returns per record the entities the store knew nothing of."""
        keys = sorted(set(ENTITY_JOIN_KEYS.values()))
        rows = [{k: e[k] for k in keys} for e in entities]
        found = self.store.get_online_features(features=self.service(), entity_rows=rows).to_dict()
        unknown: list[list[str]] = [[] for _ in rows]
        for view, (entity, features) in FEATURE_VIEWS.items():
            columns = [found[f] for f in features]
            for i, values in enumerate(zip(*columns, strict=True)):
                missing = [_missing(v) for v in values]
                for feature, value, absent in zip(features, values, missing, strict=True):
                    entities[i][feature] = float("nan") if absent else float(value)
                if all(missing):
                    unknown[i].append(f"{entity} {rows[i][ENTITY_JOIN_KEYS[entity]] or '(none)'}: {view}")
        return unknown


def lookup(store: FeatureStore, entities: pd.DataFrame) -> tuple[pd.DataFrame, list[list[str]]]:
    """`entities` (schedule-time columns with the entity keys) with every Feast feature added, as of now in
    the online store; and per row the entities the store knew nothing of (their features stay NaN)."""
    import pandas as pd

    records = entities.to_dict("records")
    unknown = OnlineFeatures(store).lookup(records)
    return pd.DataFrame(records, index=entities.index), unknown
