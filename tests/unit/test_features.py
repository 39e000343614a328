"""Invariants of the single feature-name module (TFX template style), checked against the code that
consumes it: Feast's definitions, the cleaning step's real output, the model's inputs."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

import pandas as pd
import pytest

from include.contract import features
from include.ingest.clean import CLEAN_COLUMNS, clean_flights, clean_weather
from include.ingest.collect import replay_flights, replay_weather

DAY = dt.date(2013, 3, 14)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return replay_flights(DAY).astype(object)


@pytest.fixture(scope="module")
def clean(raw) -> pd.DataFrame:
    return clean_flights(raw, DAY, None).clean


def test_no_post_departure_column_is_a_model_feature() -> None:
    assert not set(features.POST_DEPARTURE_COLUMNS) & set(features.MODEL_FEATURES)
    assert features.LABEL_KEY in features.POST_DEPARTURE_COLUMNS
    # Every raw column observed after departure is declared as such, so the check above covers it.
    after_departure = {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
    assert after_departure <= set(features.RAW_FLIGHT_COLUMNS)
    assert after_departure <= set(features.POST_DEPARTURE_COLUMNS)


def test_schedule_features_of_a_real_day_do_not_depend_on_what_happened_after_departure(raw, clean) -> None:
    """Rewrite every post-departure column of a real day (within valid ranges): no model input the
    cleaning step derives for that day may change."""
    rewritten = raw.copy()
    rewritten["dep_time"] = 600
    rewritten["arr_time"] = 900
    rewritten["dep_delay"] = 0.0
    rewritten["arr_delay"] = rewritten["arr_delay"].map(lambda v: v if pd.isna(v) else 1000.0 - float(v))
    rewritten["air_time"] = 100.0
    again = clean_flights(rewritten, DAY, None).clean
    inputs = [f for f in features.MODEL_FEATURES if f in CLEAN_COLUMNS]
    assert set(features.SCHEDULE_CATEGORICAL + features.SCHEDULE_NUMERIC) <= set(inputs)
    pd.testing.assert_frame_equal(clean[inputs], again[inputs])
    assert not clean[features.LABEL_KEY].equals(again[features.LABEL_KEY])  # the rewrite did reach the label


def test_feature_names_are_unique() -> None:
    assert len(features.MODEL_FEATURES) == len(set(features.MODEL_FEATURES))
    assert features.MODEL_FEATURES == (
        features.SCHEDULE_CATEGORICAL + features.SCHEDULE_NUMERIC + features.ALL_FEAST_FEATURES
    )


def test_every_feast_feature_belongs_to_exactly_one_view() -> None:
    owners = Counter(f for _, names in features.FEATURE_VIEWS.values() for f in names)
    assert set(owners) == set(features.ALL_FEAST_FEATURES)
    assert {f: n for f, n in owners.items() if n != 1} == {}
    # Looked up in Feast, never also carried on the entity row.
    assert not set(owners) & set(features.SCHEDULE_CATEGORICAL + features.SCHEDULE_NUMERIC)
    assert not set(owners) & set(features.ENTITY_JOIN_KEYS.values())


def test_every_view_uses_a_declared_entity_and_service_is_versioned() -> None:
    for view, (entity, names) in features.FEATURE_VIEWS.items():
        assert view.endswith("_fv")
        assert entity in features.ENTITY_JOIN_KEYS
        assert names
    assert re.fullmatch(r"[a-z_]+_v\d+", features.FEATURE_SERVICE)


def test_the_feature_service_serves_exactly_the_contracts_views_and_features() -> None:
    from feature_repo import definitions

    service = definitions.flight_delay_v1
    assert service.name == features.FEATURE_SERVICE
    served = [f.name for p in service.feature_view_projections for f in p.features]
    assert Counter(served) == Counter(features.ALL_FEAST_FEATURES)
    by_view = {p.name: [f.name for f in p.features] for p in service.feature_view_projections}
    assert by_view == {view: names for view, (_, names) in features.FEATURE_VIEWS.items()}
    for name, (entity, _) in features.FEATURE_VIEWS.items():
        view = getattr(definitions, name)
        assert view.entities == [entity]
        assert getattr(definitions, entity).join_key == features.ENTITY_JOIN_KEYS[entity]


def test_clean_output_carries_the_schedule_history_and_key_columns(clean) -> None:
    assert list(clean.columns) == CLEAN_COLUMNS
    assert not clean.empty
    history = [f for g in features.HISTORY_GROUPS for f in features.history_features(g)]
    assert set(features.SCHEDULE_CATEGORICAL + features.SCHEDULE_NUMERIC + history) <= set(clean.columns)
    # Feast joins on these, and the point-in-time lookup needs the timestamp.
    assert set(features.ENTITY_JOIN_KEYS.values()) | {features.EVENT_TIMESTAMP} <= set(clean.columns)
    assert set(features.FLIGHT_KEY) <= set(clean.columns)
    assert not clean.duplicated(features.FLIGHT_KEY).any()  # the key identifies a flight on a real day
    assert clean[features.FLIGHT_KEY].notna().all().all()


def test_clean_weather_carries_every_weather_feature() -> None:
    weather = clean_weather(replay_weather(DAY))
    assert set(features.WEATHER_FEATURES) <= set(weather.columns)
    assert {features.ENTITY_JOIN_KEYS["airport"], features.EVENT_TIMESTAMP} <= set(weather.columns)
    assert weather[features.WEATHER_FEATURES].notna().any().all()
