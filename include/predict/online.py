"""Feast's online store, read as a KServe Feast transformer does: the model's looked-up inputs for a flight's
origin, carrier, route and plane, through the versioned FeatureService that training joined offline."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from include.contract.features import FEATURE_SERVICE, FEATURE_VIEWS

log = logging.getLogger(__name__)

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


def _number(value: Any) -> float:
    """A Feast value as the model's float input: NaN where the store holds none (unset or null)."""
    kind = None if value is None else value.WhichOneof("val")
    found = None if kind is None or kind == "null_val" else getattr(value, kind)
    return float("nan") if found is None or _missing(found) else float(found)


class OnlineFeatures:
    """The online store, read through Feast's `OnlineStore.online_read`, one read per feature view of the
    versioned FeatureService, each entity once however many flights share it.

    That is what `FeatureStore.get_online_features` does inside, less the response it builds a value at a
    time for every flight (12 ms of 100 flights went there). The service and its views are resolved once
    and again every `refresh_s` (a `feast apply` changes them; reading them from the SQL registry on every
    request cost 8 ms)."""

    def __init__(self, store: FeatureStore, refresh_s: float = 60.0) -> None:
        from feast.infra.online_stores.helpers import get_online_store_from_config

        self.store, self.refresh_s = store, refresh_s
        self.online_store = get_online_store_from_config(store.config.online_store)
        self._views: list[tuple[str, Any, str, list[str]]] = []
        self._read_at = 0.0
        self._lock = threading.Lock()

    def views(self) -> list[tuple[str, Any, str, list[str]]]:
        """(view name, FeatureView, its join key, the features the service takes from it), per view: read
        from the registry outside the lock (6 reads, ~10 ms), so lookups keep the views in force meanwhile."""
        with self._lock:
            views, stale = self._views, not self._views or time.monotonic() - self._read_at >= self.refresh_s
            if stale:
                self._read_at = time.monotonic()  # one refresher at a time; the others use what is in force
        if stale:
            try:
                views = self._read_views()
            except Exception:
                if not self._views:
                    raise
                log.exception("the FeatureService %s could not be read again; serving the views in force",
                              FEATURE_SERVICE)  # fmt: skip
            else:
                with self._lock:
                    self._views = views
        return views

    def _read_views(self) -> list[tuple[str, Any, str, list[str]]]:
        service = self.store.get_feature_service(FEATURE_SERVICE)
        views = []
        for projection in service.feature_view_projections:
            view = self.store.get_feature_view(projection.name)
            if len(view.join_keys) != 1:
                raise ValueError(f"{projection.name} has join keys {view.join_keys}; one is expected")
            views.append((projection.name, view, view.join_keys[0], [f.name for f in projection.features]))
        # The registry must serve what the model takes (a contract feature it lacks would be scored as NaN).
        served = {name: features for name, _, _, features in views}
        expected = {name: features for name, (_, features) in FEATURE_VIEWS.items()}
        if served != expected:
            raise ValueError(f"the registry's {FEATURE_SERVICE} serves {served}, the contract says {expected}: "
                             "run `feast apply` (bin/nightshift prepare)")  # fmt: skip
        return views

    def warm(self) -> None:
        """Load the registry and open the store's connections before the first caller waits for them (cold,
        the first requests took seconds)."""
        self.lookup([{"origin": "JFK", "carrier": "B6", "route": "JFK-BOS", "tailnum": ""}])

    def read(self, view: Any, join_key: str, features: list[str], values: list[str]) -> dict[str, list[float]]:
        """Each entity value's features in `view` (NaN where missing); an entity the store lacks is absent."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=[join_key], entity_values=[Value(string_val=v)]) for v in values]
        rows = self.online_store.online_read(self.store.config, view, keys, features)
        return {v: [_number(found.get(f)) for f in features] for v, (_, found) in zip(values, rows, strict=True)
                if found}  # fmt: skip

    def lookup(self, entities: list[dict[str, Any]]) -> list[list[str]]:
        """Add every Feast feature to each entity record (NaN where the store has none), as of now in the
        online store; returns per record the entities the store knew nothing of."""
        unknown: list[list[str]] = [[] for _ in entities]
        for name, view, join_key, features in self.views():
            found = self.read(view, join_key, features, sorted({str(e[join_key]) for e in entities}))
            entity = FEATURE_VIEWS[name][0]
            absent = [float("nan")] * len(features)
            for i, record in enumerate(entities):
                values = found.get(str(record[join_key]), absent)
                record.update(zip(features, values, strict=True))
                if all(math.isnan(v) for v in values):
                    unknown[i].append(f"{entity} {record[join_key] or '(none)'}: {name}")
        return unknown


def lookup(store: FeatureStore, entities: pd.DataFrame) -> tuple[pd.DataFrame, list[list[str]]]:
    """`entities` (schedule-time columns with the entity keys) with every Feast feature added, as of now in
    the online store; and per row the entities the store knew nothing of (their features stay NaN)."""
    import pandas as pd

    records = entities.to_dict("records")
    unknown = OnlineFeatures(store).lookup(records)
    return pd.DataFrame(records, index=entities.index), unknown
