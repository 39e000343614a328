"""Training's coverage rule: a window may lack published features on at most a configured share of
its days; beyond it the window is refused at once, naming the days (issue 13, defect 4)."""

from __future__ import annotations

import datetime as dt

import pytest

from include.core.errors import PermanentError
from include.train.dataset import DatasetError, Window, published_days_of

WINDOW = Window(end=dt.date(2013, 1, 20), train_days=16, validation_days=2, test_days=2)
DAYS = WINDOW.days()


def test_a_day_under_the_allowed_share_is_left_out() -> None:
    published = {d: f"run_{d}" for d in DAYS if d != DAYS[3]}
    assert published_days_of(WINDOW, published, 0.05) == [d for d in DAYS if d != DAYS[3]]


def test_beyond_the_share_the_window_is_refused_naming_the_days() -> None:
    with pytest.raises(DatasetError, match=r"2 of the 20 days .*validation\): 2013-01-01…2013-01-02;"):
        published_days_of(WINDOW, {d: "r" for d in DAYS[2:]}, 0.05)
    with pytest.raises(DatasetError, match=DAYS[3].isoformat()):
        published_days_of(WINDOW, {d: "r" for d in DAYS if d != DAYS[3]}, 0.0)


def test_a_refused_window_is_not_retried() -> None:
    assert issubclass(DatasetError, PermanentError)


def test_the_share_is_configured_and_checked() -> None:
    from include.core.config import ConfigError, load_settings

    assert load_settings({"NIGHTSHIFT_MAX_MISSING_DAY_SHARE": "0.2"}).max_missing_day_share == 0.2
    with pytest.raises(ConfigError, match="NIGHTSHIFT_MAX_MISSING_DAY_SHARE"):
        load_settings({"NIGHTSHIFT_MAX_MISSING_DAY_SHARE": "2"})


def test_missing_days_are_named_as_runs_of_dates() -> None:
    from include.train.dataset import describe_days

    days = [dt.date(2013, 9, 25) + dt.timedelta(days=n) for n in range(13)] + [dt.date(2013, 10, 9)]
    assert describe_days(days) == "2013-09-25…2013-10-07, 2013-10-09"
