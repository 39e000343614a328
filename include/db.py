"""nightshift's own metadata in Postgres: engine, table handles and the writes tasks make.

Tables are created and evolved only by the alembic migrations in `include/migrations/`; this
module reflects nothing at import and never issues DDL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert

from include.postgres import sqlalchemy_url

SCHEMA = "nightshift"
FEAST_ONLINE_SCHEMA = "feast_online"

metadata = sa.MetaData(schema=SCHEMA)

partitions = sa.Table(
    "partitions",
    metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("content_sha256", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
)

ingestion_runs = sa.Table(
    "ingestion_runs",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("dag_id", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("rows_raw", sa.Integer),
    sa.Column("rows_clean", sa.Integer),
    sa.Column("rows_quarantined", sa.Integer),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

quarantine_counts = sa.Table(
    "quarantine_counts",
    metadata,
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("reason", sa.Text, primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
)

validation_results = sa.Table(
    "validation_results",
    metadata,
    sa.Column("suite", sa.Text, primary_key=True),
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("evaluated", sa.Integer, nullable=False),
    sa.Column("critical_failed", sa.Integer, nullable=False),
    sa.Column("warning_failed", sa.Integer, nullable=False),
    sa.Column("failures", JSONB, nullable=False),
    sa.Column("result_uri", sa.Text, nullable=False),
    sa.Column("docs_uri", sa.Text),
    sa.Column("validated_at", sa.DateTime(timezone=True), nullable=False),
)


@cache
def engine(url: str) -> sa.Engine:
    """One pooled engine per URL per process."""
    return sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True, future=True)


def upsert(conn: sa.Connection, table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
    """Insert rows; on a primary-key clash update the columns the rows carry (tasks may retry)."""
    rows = list(rows)
    if not rows:
        return
    stmt = insert(table).values(rows)
    keys = [c.name for c in table.primary_key.columns]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={name: stmt.excluded[name] for name in rows[0] if name not in keys},
    )
    conn.execute(stmt)


def record_partition(
    url: str, dataset: str, day: dt.date, uri: str, rows: int, sha256: str, run_id: str, at: dt.datetime
) -> None:
    with engine(url).begin() as conn:
        upsert(
            conn,
            partitions,
            [
                {
                    "dataset": dataset,
                    "partition_date": day,
                    "uri": uri,
                    "rows": rows,
                    "content_sha256": sha256,
                    "run_id": run_id,
                    "written_at": at,
                }
            ],
        )


def replace_quarantine_counts(url: str, day: dt.date, counts: dict[str, int], run_id: str) -> None:
    """The day's counts per reason, replacing what an earlier run of the day recorded."""
    with engine(url).begin() as conn:
        conn.execute(sa.delete(quarantine_counts).where(quarantine_counts.c.partition_date == day))
        upsert(
            conn,
            quarantine_counts,
            [{"partition_date": day, "reason": r, "rows": n, "run_id": run_id} for r, n in counts.items()],
        )


def record_ingestion(url: str, row: dict[str, Any]) -> None:
    with engine(url).begin() as conn:
        upsert(conn, ingestion_runs, [row])


def record_validation(url: str, row: dict[str, Any]) -> None:
    row = {**row, "failures": json.loads(json.dumps(row["failures"], default=str))}
    with engine(url).begin() as conn:
        upsert(conn, validation_results, [row])


def partition_rows(url: str, dataset: str, days: Iterable[dt.date]) -> dict[dt.date, int]:
    """Row counts recorded for `dataset` on `days` (missing days are absent)."""
    days = list(days)
    if not days:
        return {}
    with engine(url).connect() as conn:
        result = conn.execute(
            sa.select(partitions.c.partition_date, partitions.c.rows).where(
                partitions.c.dataset == dataset, partitions.c.partition_date.in_(days)
            )
        )
        return {d: n for d, n in result}
