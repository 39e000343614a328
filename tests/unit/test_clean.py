"""clean: every kind of bad row, UTC conversion, labels, point-in-time history."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from include.contract.features import LABEL_KEY, SCHEDULED_DEPARTURE_UTC
from include.ingest.clean import (
    CLEAN_COLUMNS,
    QUARANTINE_REASONS,
    clean_flights,
    clean_weather,
    daily_delay_stats,
    history_window,
)
from include.ingest.collect import replay_flights, replay_weather
from tests.factories import with_bad_rows

DAY = dt.date(2013, 1, 2)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return replay_flights(DAY).astype(object)


def test_real_day_is_all_clean(raw) -> None:
    result = clean_flights(raw, DAY, None)
    assert len(result.clean) == len(raw) == 943
    assert result.quarantine.empty
    assert list(result.clean.columns) == CLEAN_COLUMNS


def test_every_kind_of_bad_row_is_quarantined_with_its_reason(raw) -> None:
    dirty, expected = with_bad_rows(raw)
    result = clean_flights(dirty, DAY, None)
    assert result.reasons == expected
    assert set(result.reasons) == set(QUARANTINE_REASONS)
    assert len(result.clean) == len(raw)
    assert len(result.clean) + len(result.quarantine) == len(dirty)
    assert set(result.quarantine["reason"]) == set(expected)
    assert (result.quarantine["flight_date"] == DAY.isoformat()).all()
    unparseable = result.quarantine[result.quarantine["reason"] == "unparseable"]
    assert set(unparseable["distance"].dropna()) >= {"far"}  # raw values are kept as delivered


@pytest.mark.parametrize(
    ("day", "hhmm", "utc"),
    [
        (dt.date(2013, 1, 2), 515, "2013-01-02T10:15:00+00:00"),  # EST, UTC-5
        (dt.date(2013, 7, 2), 515, "2013-07-02T09:15:00+00:00"),  # EDT, UTC-4
        (dt.date(2013, 1, 2), 2359, "2013-01-03T04:59:00+00:00"),
    ],
)
def test_scheduled_departure_is_converted_from_new_york_to_utc(day, hhmm, utc) -> None:
    row = replay_flights(day).iloc[[0]].copy()
    row["sched_dep_time"] = hhmm
    clean = clean_flights(row, day, None).clean
    assert clean[SCHEDULED_DEPARTURE_UTC].iloc[0].isoformat() == utc


def test_label_is_threshold_on_arrival_delay_and_unknown_when_cancelled(raw) -> None:
    rows = raw.iloc[:4].copy()
    rows["arr_delay"] = [14.0, 15.0, -3.0, None]
    rows["flight"] = [1, 2, 3, 4]
    clean = clean_flights(rows, DAY, None).clean.sort_values("flight")
    assert clean[LABEL_KEY].tolist()[:3] == [False, True, False]
    assert pd.isna(clean[LABEL_KEY].tolist()[3])


def test_history_uses_only_earlier_days(raw) -> None:
    earlier_day = DAY - dt.timedelta(days=1)
    earlier = clean_flights(replay_flights(earlier_day).astype(object), earlier_day, None).clean
    stats = daily_delay_stats(earlier, earlier_day)
    result = clean_flights(raw, DAY, stats).clean
    ua = earlier[(earlier["carrier"] == "UA") & earlier[LABEL_KEY].notna()]
    row = result[result["carrier"] == "UA"].iloc[0]
    assert row["carrier_flights_7d"] == len(ua)
    assert row["carrier_delay_rate_7d"] == pytest.approx(ua[LABEL_KEY].astype(float).mean())
    # The day's own outcomes must not feed its features, whatever they are.
    own = daily_delay_stats(result, DAY).assign(delayed=lambda f: f["flights"])
    again = clean_flights(raw, DAY, pd.concat([stats, own[own["flight_date"] < DAY]])).clean
    pd.testing.assert_frame_equal(result, again)
    assert DAY not in history_window(DAY)
    assert max(history_window(DAY)) == earlier_day


def test_without_history_rates_are_missing_and_volumes_zero(raw) -> None:
    clean = clean_flights(raw, DAY, None).clean
    assert clean["carrier_delay_rate_7d"].isna().all()
    assert (clean["carrier_flights_7d"] == 0).all()


def test_weather_is_typed_utc_and_deduplicated() -> None:
    raw = replay_weather(DAY)
    doubled = pd.concat([raw, raw.iloc[:5]], ignore_index=True)
    weather = clean_weather(doubled)
    assert len(weather) == len(raw) == 72
    assert str(weather["event_timestamp"].dt.tz) == "UTC"
    assert weather["event_timestamp"].min().isoformat() == "2013-01-02T05:00:00+00:00"
