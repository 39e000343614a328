"""Feast objects for nightshift: entities, file sources in the lake, feature views, service.

Names and feature lists come from `include/contract/features.py`, the lake root from the settings
(`include/core/config.py`, no Airflow); this file only declares. The offline
sources are folders of daily Parquet files under `{lake}/features/<view>/` that the ingest DAG's
materialize task publishes after validation.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, String

from include.contract.features import (
    ENTITY_JOIN_KEYS,
    EVENT_TIMESTAMP,
    FEATURE_SERVICE,
    FEATURE_VIEWS,
)
from include.core.config import load_settings

airport = Entity(
    name="airport",
    join_keys=[ENTITY_JOIN_KEYS["airport"]],
    value_type=ValueType.STRING,
    description="NYC origin airport (FAA code)",
)
carrier = Entity(
    name="carrier",
    join_keys=[ENTITY_JOIN_KEYS["carrier"]],
    value_type=ValueType.STRING,
    description="Two-letter airline code",
)
route = Entity(
    name="route",
    join_keys=[ENTITY_JOIN_KEYS["route"]],
    value_type=ValueType.STRING,
    description="ORIGIN-DEST pair",
)
plane = Entity(
    name="plane",
    join_keys=[ENTITY_JOIN_KEYS["plane"]],
    value_type=ValueType.STRING,
    description="Aircraft tail number",
)
ENTITIES = {"airport": airport, "carrier": carrier, "route": route, "plane": plane}

# How long a value stays valid for a lookup at a later time.
TTL = {
    "origin_weather_hourly_fv": timedelta(hours=3),
    "carrier_delay_history_fv": timedelta(days=2),
    "route_delay_history_fv": timedelta(days=2),
    "origin_delay_history_fv": timedelta(days=2),
    "plane_attributes_fv": timedelta(days=400),
    # a row every hour: a flight reads its hour's, never one from before the hour before
    "origin_recent_departures_fv": timedelta(hours=2),
}


def _view(name: str) -> FeatureView:
    entity, features = FEATURE_VIEWS[name]
    source = FileSource(
        name=name.removesuffix("_fv") + "_source",
        path=load_settings().feature_source_glob(name),
        file_format=ParquetFormat(),
        timestamp_field=EVENT_TIMESTAMP,
    )
    return FeatureView(
        name=name,
        entities=[ENTITIES[entity]],
        ttl=TTL[name],
        # Declaring the join key too means `feast apply` needs no data to infer a schema.
        schema=[
            Field(name=ENTITY_JOIN_KEYS[entity], dtype=String),
            *(Field(name=f, dtype=Float64) for f in features),
        ],
        source=source,
        online=True,
        tags={"owner": "nightshift"},
    )


origin_weather_hourly_fv = _view("origin_weather_hourly_fv")
carrier_delay_history_fv = _view("carrier_delay_history_fv")
route_delay_history_fv = _view("route_delay_history_fv")
origin_delay_history_fv = _view("origin_delay_history_fv")
plane_attributes_fv = _view("plane_attributes_fv")
origin_recent_departures_fv = _view("origin_recent_departures_fv")

flight_delay_v2 = FeatureService(
    name=FEATURE_SERVICE,
    features=[
        origin_weather_hourly_fv,
        carrier_delay_history_fv,
        route_delay_history_fv,
        origin_delay_history_fv,
        plane_attributes_fv,
        origin_recent_departures_fv,
    ],
    description="Model input contract v2: everything known before departure.",
)
