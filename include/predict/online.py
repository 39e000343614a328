"""Feast's online store, read as a KServe Feast transformer does: the model's looked-up inputs for a flight's
origin, carrier, route and plane, through the versioned FeatureService that training joined offline."""

from __future__ import annotations

import math
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


def lookup(store: FeatureStore, entities: pd.DataFrame) -> tuple[pd.DataFrame, list[list[str]]]:
    """`entities` (schedule-time columns with the entity keys) with every Feast feature added, as of now in
    the online store; and per row the entities the store knew nothing of (their features stay NaN)."""
    keys = sorted(set(ENTITY_JOIN_KEYS.values()))
    rows = [{k: row[k] for k in keys} for row in entities[keys].to_dict("records")]
    found = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE), entity_rows=rows).to_dict()
    frame = entities.copy()
    unknown: list[list[str]] = [[] for _ in rows]
    for view, (entity, features) in FEATURE_VIEWS.items():
        for feature in features:
            frame[feature] = [float("nan") if _missing(v) else float(v) for v in found[feature]]
        for i, values in enumerate(zip(*(found[f] for f in features), strict=True)):
            if all(_missing(v) for v in values):
                unknown[i].append(f"{entity} {rows[i][ENTITY_JOIN_KEYS[entity]] or '(none)'}: {view}")
    return frame, unknown
