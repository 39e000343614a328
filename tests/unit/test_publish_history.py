"""A rejected day's outcomes stay out of the delay history that later days publish to Feast (the
7-day carrier, route and origin delay rates the model reads): `publish_day` leaves out the days
whose latest validation failed."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from airflow.sdk import ObjectStoragePath

from include.contract.features import EVENT_TIMESTAMP, SCHEDULED_DEPARTURE_UTC, WEATHER_FEATURES
from include.core import lake
from include.ingest.publish import _feature_file, publish_day

DAY = dt.date(2013, 3, 10)
REJECTED = DAY - dt.timedelta(days=1)


def _stats(day: dt.date, flights: int, delayed: int) -> pd.DataFrame:
    return pd.DataFrame({"flight_date": [day], "group": ["carrier"], "key": ["AA"], "flights": [flights],
                         "delayed": [delayed]})  # fmt: skip


def _lake(tmp_path) -> ObjectStoragePath:
    root = ObjectStoragePath(f"file://{tmp_path}/lake/")
    weather = pd.DataFrame({"origin": ["JFK"], EVENT_TIMESTAMP: [pd.Timestamp("2013-03-10T12:00Z")],
                            **{f: [1.0] for f in WEATHER_FEATURES}})  # fmt: skip
    lake.write_parquet(lake.partition_file(root, "clean", "weather", DAY), weather)
    flights = pd.DataFrame({"tailnum": ["N10156"], "origin": ["JFK"], "dep_delay": [3.0],
                            SCHEDULED_DEPARTURE_UTC: pd.Series([pd.Timestamp("2013-03-10T13:00Z")],
                                                               dtype="datetime64[us, UTC]")})  # fmt: skip
    lake.write_parquet(lake.partition_file(root, "clean", "flights", DAY), flights)
    lake.write_parquet(lake.partition_file(root, "clean", "delay_stats", DAY), _stats(DAY, 10, 0))
    # The rejected day: every AA flight late (bad data, say a feed that stamped every arrival late).
    lake.write_parquet(lake.partition_file(root, "clean", "delay_stats", REJECTED), _stats(REJECTED, 100, 100))
    return root


def _carrier_history(root: ObjectStoragePath) -> dict[str, float]:
    frame = lake.read_parquet(_feature_file(root, "carrier_delay_history_fv", DAY))
    return frame.set_index("carrier")[["carrier_delay_rate_7d", "carrier_flights_7d"]].loc["AA"].to_dict()


def test_a_rejected_days_outcomes_are_not_in_the_published_delay_history(tmp_path) -> None:
    root = _lake(tmp_path)
    publish_day(root, DAY)
    assert _carrier_history(root) == {"carrier_delay_rate_7d": 100 / 110, "carrier_flights_7d": 110.0}
    publish_day(root, DAY, refused={REJECTED})
    assert _carrier_history(root) == {"carrier_delay_rate_7d": 0.0, "carrier_flights_7d": 10.0}


def test_the_day_published_counts_even_if_an_earlier_run_rejected_it(tmp_path) -> None:
    """Publishing a day means this run validated it: an older rejection of it no longer applies."""
    root = _lake(tmp_path)
    publish_day(root, DAY, refused={DAY, REJECTED})
    assert _carrier_history(root) == {"carrier_delay_rate_7d": 0.0, "carrier_flights_7d": 10.0}
