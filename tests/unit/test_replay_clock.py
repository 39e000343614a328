"""One clock (issue 13, defect 1): after the demo, the scheduler's nights continue the demo's 2013 data
day after day, instead of replaying the same month/day of 2013 under this year's dates (which left
training's window empty for 74 nights)."""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest

from include.core.calendar import RangeError, replayed_days
from include.core.config import load_settings
from include.ingest.steps import run_days

CLOCK = {"NIGHTSHIFT_REPLAY_START": "2026-11-30", "NIGHTSHIFT_REPLAY_FIRST_DAY": "2013-04-08"}


def _interval(night: dt.date) -> tuple[pendulum.DateTime, pendulum.DateTime]:
    start = pendulum.datetime(night.year, night.month, night.day, tz="America/New_York")
    return start, start.add(days=1)


def test_a_scheduled_night_replays_the_day_after_the_demos_data() -> None:
    settings = load_settings({**CLOCK, "NIGHTSHIFT_SOURCE": "replay"})
    assert run_days(settings, {}, *_interval(dt.date(2026, 11, 30))) == [dt.date(2013, 4, 8)]
    assert run_days(settings, {}, *_interval(dt.date(2026, 12, 13))) == [dt.date(2013, 4, 21)]


def test_fourteen_nights_are_fourteen_consecutive_days_that_continue_the_window() -> None:
    settings = load_settings({**CLOCK, "NIGHTSHIFT_SOURCE": "replay"})
    nights = [dt.date(2026, 11, 30) + dt.timedelta(days=n) for n in range(14)]
    days = [run_days(settings, {}, *_interval(n))[0] for n in nights]
    assert days == [dt.date(2013, 4, 8) + dt.timedelta(days=n) for n in range(14)]


def test_the_form_and_an_unset_clock_are_not_remapped() -> None:
    form = {"start_date": "2013-06-01", "end_date": "2013-06-02"}
    settings = load_settings({**CLOCK, "NIGHTSHIFT_SOURCE": "replay"})
    assert run_days(settings, form, None, None) == [dt.date(2013, 6, 1), dt.date(2013, 6, 2)]
    for source in ("replay", "landing"):
        unset = load_settings({"NIGHTSHIFT_SOURCE": source})
        assert run_days(unset, {}, *_interval(dt.date(2026, 11, 30))) == [dt.date(2026, 11, 30)]


def test_under_the_clock_the_landing_source_reads_the_replayed_days_drop() -> None:
    """The nights harness plays the upstream system in 2013: night 2026-11-30 reads landing/…/date=2013-04-08/."""
    landing = load_settings({**CLOCK, "NIGHTSHIFT_SOURCE": "landing"})
    assert run_days(landing, {}, *_interval(dt.date(2026, 11, 30))) == [dt.date(2013, 4, 8)]


def test_make_airflow_sets_no_clock_for_the_landing_source(tmp_path) -> None:
    from include.ops.replay import replay_clock

    landing = load_settings({"NIGHTSHIFT_SOURCE": "landing", "NIGHTSHIFT_LOCAL_DIR": str(tmp_path)})
    assert replay_clock(landing, "postgresql://unused", dt.date(2026, 12, 1)) == {}


def test_the_clock_refuses_to_run_past_the_data() -> None:
    with pytest.raises(RangeError, match="outside 2013"):
        replayed_days([dt.date(2027, 12, 1)], dt.date(2026, 11, 30), dt.date(2013, 4, 8))


def test_the_clock_is_fixed_once_from_the_latest_published_day(tmp_path, monkeypatch) -> None:
    from include.ops import replay

    settings = load_settings({"NIGHTSHIFT_LOCAL_DIR": str(tmp_path), "NIGHTSHIFT_SOURCE": "replay"})
    published = {dt.date(2013, 4, 6): "r", dt.date(2013, 4, 7): "r"}
    monkeypatch.setattr("include.ingest.records.published_days", lambda url, days=None: published)
    first = replay.replay_clock(settings, "postgresql://unused", dt.date(2026, 12, 1))
    assert first == {"NIGHTSHIFT_REPLAY_START": "2026-11-30", "NIGHTSHIFT_REPLAY_FIRST_DAY": "2013-04-08"}
    published[dt.date(2013, 4, 8)] = "r"  # a later start keeps the clock
    assert replay.replay_clock(settings, "postgresql://unused", dt.date(2026, 12, 5)) == first
