"""The served-prediction log: every prediction the service answers, with its request id, flight key, the
features it used, version, arm and latency.

Kept in memory and written as batched Parquet, never one file per request:
`{lake}/predictions/served/date=<flight day>/<batch>.parquet`, one file per flight day, version and arm
per flush, recorded in Postgres's `served_batches` (the per-day counts). A batch's id names its file,
so a flush that failed (the lake or Postgres away) is retried with the same files and records: nothing
is lost or doubled. Read back by the monitor and the canary with `served_frame`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from include.core import lake
from include.db import engine, served_batches

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

    from include.core.config import Settings

log = logging.getLogger(__name__)

ZONE, DATASET = "predictions", "served"
# Rows kept for a later flush while the lake or Postgres is away; past this the oldest are dropped (and counted).
MAX_PENDING_ROWS = 500_000


def served_dir(root: ObjectStoragePath, day: dt.date) -> ObjectStoragePath:
    return lake.partition_dir(root, ZONE, DATASET, day)


class ServedLog:
    """Thread-safe buffer of served predictions; `flush` writes it, a background thread calls it every
    `flush_s` seconds or as soon as `batch_rows` rows wait."""

    def __init__(self, root: ObjectStoragePath, url: str, batch_rows: int, flush_s: float) -> None:
        self.root, self.url = root, url
        self.batch_rows, self.flush_s = batch_rows, flush_s
        self._rows: list[dict[str, Any]] = []
        self._pending: list[tuple[str, dt.date, int, str, list[dict[str, Any]]]] = []  # cut batches not yet written
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(rows)
            if len(self._rows) >= self.batch_rows:
                self._wake.set()

    def pending_rows(self) -> int:
        """Rows buffered or cut into batches, not yet written."""
        with self._lock:
            return len(self._rows) + sum(len(p[4]) for p in self._pending)

    def _cut(self) -> None:
        """Move the buffered rows into named batches, one per flight day, version and arm."""
        with self._lock:
            rows, self._rows = self._rows, []
        groups: dict[tuple[dt.date, int, str], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault((row["flight_date"], int(row["model_version"] or 0), row["arm"]), []).append(row)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        for (day, version, arm), members in groups.items():
            self._pending.append((f"{stamp}-{uuid.uuid4().hex[:12]}-v{version}-{arm}", day, version, arm, members))
        waiting = sum(len(p[4]) for p in self._pending)
        while waiting > MAX_PENDING_ROWS:
            lost = self._pending.pop(0)
            waiting -= len(lost[4])
            self.dropped += len(lost[4])
            log.error("served-prediction log: dropped %d rows of %s (the lake or Postgres has been away too long)",
                      len(lost[4]), lost[1])  # fmt: skip

    def flush(self) -> int:
        """Write every batch waiting; returns the rows written. A failure leaves the rest for the next flush."""
        import pandas as pd

        with self._flush_lock:
            self._cut()
            done = 0
            while self._pending:
                batch_id, day, version, arm, members = self._pending[0]
                target = served_dir(self.root, day) / f"{batch_id}.parquet"
                try:
                    lake.write_parquet(target, pd.DataFrame(members))
                    record = {"batch_id": batch_id, "flight_date": day, "model_version": version, "arm": arm,
                              "rows": len(members), "errors": sum(1 for m in members if m.get("error")),
                              "uri": lake.uri(target), "written_at": dt.datetime.now(dt.UTC)}  # fmt: skip
                    with engine(self.url).begin() as conn:
                        conn.execute(insert(served_batches).values(record).on_conflict_do_nothing())
                except Exception:  # the lake or Postgres: kept, and tried again at the next flush
                    self.failed_flushes += 1
                    log.exception("served-prediction log: batch %s not written; kept for the next flush", batch_id)
                    break
                self._pending.pop(0)
                done += len(members)
            self.written += done
            return done

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(self.flush_s)
                self._wake.clear()
                self.flush()

        self._thread = threading.Thread(target=loop, name="served-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush()


def served_counts(url: str, day: dt.date) -> list[dict[str, Any]]:
    """Served predictions of one flight day, per version and arm."""
    b = served_batches
    query = (
        sa.select(b.c.model_version, b.c.arm, sa.func.sum(b.c.rows).label("rows"),
                  sa.func.sum(b.c.errors).label("errors"))
        .where(b.c.flight_date == day).group_by(b.c.model_version, b.c.arm).order_by(b.c.model_version, b.c.arm)
    )  # fmt: skip
    with engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def served_frame(settings: Settings, *, day: dt.date | None = None, since: dt.datetime | None = None,
                 version: int | None = None) -> pd.DataFrame | None:  # fmt: skip
    """The logged rows of the recorded batches (of a flight day, written since a time, of a version)."""
    import pandas as pd

    b = served_batches
    query = sa.select(b.c.uri).order_by(b.c.batch_id)
    if day is not None:
        query = query.where(b.c.flight_date == day)
    if since is not None:
        query = query.where(b.c.written_at >= since)
    if version is not None:
        query = query.where(b.c.model_version == version)
    with engine(settings.require_database_url()).connect() as conn:
        uris = list(conn.execute(query).scalars())
    frames = [lake.read_parquet(lake.at(settings, u)) for u in uris]
    return pd.concat(frames, ignore_index=True) if frames else None


def served_day(settings: Settings, day: dt.date) -> pd.DataFrame | None:
    """What the service answered for the day's flights: per flight key its latest prediction that a model
    served (errors left out), with the features that prediction used and the version and arm that served it."""
    frame = served_frame(settings, day=day)
    if frame is None:
        return None
    answered = frame[frame["error"].isna() & frame["p_delayed"].notna()]
    if answered.empty:
        return None
    latest = answered.sort_values("served_at", kind="stable").drop_duplicates("flight_key", keep="last")
    return latest.reset_index(drop=True)
