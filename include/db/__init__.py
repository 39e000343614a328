"""nightshift's Postgres: one engine per URL, the upsert every task uses, and every table.

The tables are declared once, in `include.db.tables`; the alembic migrations in
`include.db.migrations` create and evolve them, and a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import make_url

from include.db.tables import (
    ALERT_SEVERITIES,
    FEAST_ONLINE_SCHEMA,
    SCHEMA,
    alerts,
    api_keys,
    deployments,
    drift_reports,
    gate_checks,
    ingestion_runs,
    metadata,
    model_versions,
    partitions,
    quarantine_counts,
    retrain_requests,
    runs,
    served_batches,
    serving_health,
    serving_incidents,
    validation_results,
)

__all__ = [
    "ALERT_SEVERITIES", "FEAST_ONLINE_SCHEMA", "SCHEMA", "alerts", "api_keys", "deployments", "drift_reports", "engine",
    "gate_checks", "ingestion_runs", "libpq_host", "metadata", "model_versions", "partitions", "quarantine_counts",
    "retrain_requests", "runs", "served_batches", "serving_health", "serving_incidents", "sqlalchemy_url", "upsert",
    "validation_results",
]  # fmt: skip

# Every statement gives up after this long, so a stuck lock or server fails the task (and its retry) instead
# of hanging it; connecting gives up after CONNECT_TIMEOUT_S.
STATEMENT_TIMEOUT_MS = 120_000
CONNECT_TIMEOUT_S = 10


def sqlalchemy_url(url: str, driver: str = "psycopg2") -> str:
    """`postgresql://…` → `postgresql+<driver>://…`, keeping host, socket and options."""
    parsed = make_url(url).set(drivername=f"postgresql+{driver}")
    return parsed.render_as_string(hide_password=False)


def libpq_host(url: str) -> tuple[str, int]:
    """Host (or socket directory) and port as libpq-style clients such as Feast want them."""
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or "127.0.0.1"
    if isinstance(host, tuple):
        host = host[0]
    return str(host), int(parsed.port or 5432)


@cache
def engine(url: str) -> sa.Engine:
    """One pooled engine per URL per process, with connect and statement timeouts."""
    return sa.create_engine(
        sqlalchemy_url(url), pool_pre_ping=True, future=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"},
    )  # fmt: skip


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
