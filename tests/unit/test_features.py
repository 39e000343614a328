"""Invariants of the single feature-name module (TFX template style)."""

from __future__ import annotations

import re

from include.contract import features
from include.ingest.clean import CLEAN_COLUMNS


def test_no_post_departure_column_is_a_model_feature() -> None:
    leaky = {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", features.LABEL_KEY}
    assert leaky <= set(features.POST_DEPARTURE_COLUMNS)
    assert not leaky & set(features.MODEL_FEATURES)


def test_feature_names_are_unique() -> None:
    assert len(features.MODEL_FEATURES) == len(set(features.MODEL_FEATURES))


def test_every_view_uses_a_declared_entity_and_service_is_versioned() -> None:
    for view, (entity, names) in features.FEATURE_VIEWS.items():
        assert view.endswith("_fv")
        assert entity in features.ENTITY_JOIN_KEYS
        assert names
    assert re.fullmatch(r"[a-z_]+_v\d+", features.FEATURE_SERVICE)


def test_history_features_are_clean_columns() -> None:
    for group in features.HISTORY_GROUPS:
        assert set(features.history_features(group)) <= set(CLEAN_COLUMNS)
    assert set(features.SCHEDULE_CATEGORICAL + features.SCHEDULE_NUMERIC) <= set(CLEAN_COLUMNS)
