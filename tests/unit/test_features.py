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

    service = definitions.flight_delay_v2
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


def _flights(*rows: tuple[str, str, float | None]) -> pd.DataFrame:
    """Flights of DAY at JFK: (scheduled departure, New York time 'HH:MM'), departure delay (None: not left)."""
    scheduled = [pd.Timestamp(f"{DAY} {hhmm}", tz="America/New_York").tz_convert("UTC") for hhmm, _ in rows]
    return pd.DataFrame({"origin": "JFK",
                         features.SCHEDULED_DEPARTURE_UTC: pd.Series(scheduled).astype("datetime64[us, UTC]"),
                         "dep_delay": [float("nan") if d is None else d for _, d in rows]})  # fmt: skip


def _at(frame: pd.DataFrame, hhmm: str, origin: str = "JFK") -> dict[str, float]:
    stamp = pd.Timestamp(f"{DAY} {hhmm}", tz="America/New_York").tz_convert("UTC")
    row = frame[(frame["origin"] == origin) & (frame[features.EVENT_TIMESTAMP] == stamp)]
    assert len(row) == 1, row
    return row[features.RECENT_DEPARTURE_FEATURES].iloc[0].to_dict()


def test_recent_departures_count_only_what_is_known_at_the_hour() -> None:
    from include.ingest.publish import recent_departures

    share, known, mean_delay = features.RECENT_DEPARTURE_FEATURES
    rows = recent_departures(DAY, _flights(
        ("09:00", 0.0),     # left on time at 09:00
        ("09:30", 20.0),    # left late at 09:50
        ("10:00", None),    # cancelled: late once 15 minutes past its schedule
        ("10:50", None),    # at 11:00 only 10 minutes past: not known yet
        ("10:30", 40.0),    # leaves at 11:10: at 11:00 it is known late (waiting 30 minutes), its delay is not
        ("11:00", 500.0),   # scheduled at the hour: not in the hours before it
    ))  # fmt: skip
    assert _at(rows, "11:00") == {share: 3 / 4, known: 4.0, mean_delay: 10.0}
    # An hour later the 10:30 flight has left (its 40 minutes count), and the 10:50 and 11:00 ones are late.
    assert _at(rows, "12:00") == {share: 5 / 6, known: 6.0, mean_delay: 20.0}
    assert _at(rows, "09:00")[known] == 0.0
    assert pd.isna(_at(rows, "09:00")[share])
    # 14:00 looks back to 11:00: the 500-minute flight left at 19:20, so it is late and not yet averaged.
    at_two = _at(rows, "14:00")
    assert (at_two[share], at_two[known]) == (1.0, 1.0)
    assert pd.isna(at_two[mean_delay])
    # A row for every NYC origin and every hour of the New York day, even with no flight.
    assert len(rows) == 3 * 24
    assert _at(rows, "11:00", origin="LGA")[known] == 0.0


def test_recent_departures_of_a_real_day_do_not_depend_on_what_happened_after_the_hour(clean) -> None:
    """Rewrite what happened at or after 12:00 on a real day (every later departure moves later still, and
    flights scheduled from 12:00 on change completely): no row stamped 12:00 or earlier may change."""
    from include.ingest.publish import recent_departures

    noon = pd.Timestamp(f"{DAY} 12:00", tz="America/New_York").tz_convert("UTC")
    scheduled = clean[features.SCHEDULED_DEPARTURE_UTC]
    left_at = scheduled + pd.to_timedelta(clean["dep_delay"], unit="m")
    rewritten = clean.copy()
    later = (left_at >= noon) | clean["dep_delay"].isna()
    rewritten.loc[later, "dep_delay"] = clean.loc[later, "dep_delay"] + 300
    rewritten.loc[scheduled >= noon, "dep_delay"] = -5.0
    before, after = recent_departures(DAY, clean), recent_departures(DAY, rewritten)
    known = before[features.EVENT_TIMESTAMP] <= noon
    pd.testing.assert_frame_equal(before[known], after[known])
    assert not before[~known].equals(after[~known])  # the rewrite did reach the later hours
    assert before.loc[known, features.RECENT_DEPARTURE_FEATURES[1]].sum() > 100  # a real morning's flights
