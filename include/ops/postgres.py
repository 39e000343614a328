"""Which Postgres nightshift uses: the one at DATABASE_URL, or an embedded one under `.local/`.

The embedded server is PostgreSQL 16 from the `pgserver` wheel, listening on a Unix socket inside
its data directory, so it needs no root, no Docker, no system package and no free TCP port.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "nightshift"


def embedded_data_dir(local_dir: Path) -> Path:
    return local_dir / "pg"


def _pg_system_user() -> str | None:
    # pgserver runs the server as an unprivileged `pgserver` user when started by root.
    return "pgserver" if os.geteuid() == 0 else None


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return a `postgresql://` URL to its database."""
    import pgserver

    # pgserver logs every pg_ctl call at INFO, including from an atexit hook after streams close.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    return server.get_uri(database=EMBEDDED_DATABASE)


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server cleanly (fast shutdown). Returns False if it was not running."""
    if not (data_dir / "postmaster.pid").exists():
        return False
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=_pg_system_user())
    return True


def kill_embedded(data_dir: Path) -> None:
    """Stop the embedded server immediately, as a crash would (no checkpoint; it recovers on start).
    `start_embedded` starts it again: pgserver's handle on the stopped server is dropped here."""
    import pgserver
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_dir, user=_pg_system_user())
    pgserver.PostgresServer._instances.pop(data_dir.expanduser().resolve(), None)


def resolve_database_url(database_url: str | None, local_dir: Path) -> str:
    """DATABASE_URL when given, else the embedded server (started on demand)."""
    if database_url:
        return database_url
    return start_embedded(embedded_data_dir(local_dir))
