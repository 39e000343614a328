"""validate: the GX suites in expectations/ on real and broken clean partitions."""

from __future__ import annotations

import datetime as dt

import pytest

from include.core.calendar import end_of_day_utc, local_midnight_utc
from include.ingest.clean import clean_flights, clean_weather
from include.ingest.collect import replay_flights, replay_weather
from include.ingest.validate import SUITES, DayValidator, load_suite_json

DAY = dt.date(2013, 3, 5)


@pytest.fixture(scope="module")
def validator() -> DayValidator:
    return DayValidator()


@pytest.fixture(scope="module")
def clean():
    return clean_flights(replay_flights(DAY), DAY, None).clean


def _params(low: int = 1, high: int = 5000) -> dict:
    return {
        "min_rows": low,
        "max_rows": high,
        "day_start_utc": local_midnight_utc(DAY),
        "day_end_utc": end_of_day_utc(DAY),
    }


def test_every_suite_file_has_severities() -> None:
    for suite in SUITES:
        expectations = load_suite_json(suite)["expectations"]
        assert {e["severity"] for e in expectations} <= {"critical", "warning"}
        assert any(e["severity"] == "critical" for e in expectations)


def test_real_day_passes(validator, clean) -> None:
    outcome, _ = validator.run("flights_clean", clean, DAY, _params())
    assert outcome.success, outcome.describe_failures()
    assert outcome.evaluated == len(load_suite_json("flights_clean")["expectations"])
    weather, _ = validator.run("weather_clean", clean_weather(replay_weather(DAY)), DAY, _params())
    assert weather.success, weather.describe_failures()


def test_broken_partition_fails_critically_naming_what_and_observed(validator, clean) -> None:
    broken = clean.copy()
    broken.loc[broken.index[:5], "origin"] = "XXX"
    outcome, _ = validator.run("flights_clean", broken, DAY, _params(low=2000, high=3000))
    assert not outcome.success
    failed = {f["expectation"] for f in outcome.critical_failures}
    assert failed == {"expect_column_values_to_be_in_set", "expect_table_row_count_to_be_between"}
    message = outcome.describe_failures()
    assert f"expect_table_row_count_to_be_between(table) observed {len(clean)}" in message
    assert "XXX" in message


def test_stale_partition_fails_freshness(validator, clean) -> None:
    stale = clean.copy()
    stale["sched_dep_ts_utc"] = stale["sched_dep_ts_utc"] - dt.timedelta(days=3)
    outcome, _ = validator.run("flights_clean", stale, DAY, _params())
    assert {f["expectation"] for f in outcome.critical_failures} == {
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
    }


def test_warning_failures_are_recorded_but_do_not_fail(validator, clean) -> None:
    baseline, _ = validator.run("flights_clean", clean, DAY, _params())
    # No history was given to this day, so its delay rates are missing: a warning, not a failure.
    assert [f["column"] for f in baseline.warning_failures] == ["carrier_delay_rate_7d"]
    sparse = clean.copy()
    sparse["tailnum"] = None
    outcome, _ = validator.run("flights_clean", sparse, DAY, _params())
    assert outcome.success
    assert [f["column"] for f in outcome.warning_failures] == ["tailnum", "carrier_delay_rate_7d"]
