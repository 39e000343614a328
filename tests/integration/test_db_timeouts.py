"""nightshift's own database connections give up instead of hanging (issue 13, defect 8): a
statement past STATEMENT_TIMEOUT_MS is cancelled by the server, and connecting to a server that
never answers fails after CONNECT_TIMEOUT_S."""

from __future__ import annotations

import socket
import time

import pytest
import sqlalchemy as sa

from include import db


def test_every_connection_carries_the_statement_timeout(db_url) -> None:
    with db.engine(db_url).connect() as conn:
        setting = "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"  # in ms
        assert int(conn.execute(sa.text(setting)).scalar_one()) == db.STATEMENT_TIMEOUT_MS
        # The same server-side limit, shortened for this transaction, cancels a hung statement.
        conn.execute(sa.text("SET LOCAL statement_timeout = 300"))
        began = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            conn.execute(sa.text("SELECT pg_sleep(30)"))
        assert time.monotonic() - began < 5


def test_connecting_to_a_server_that_never_answers_gives_up(monkeypatch) -> None:
    # A socket that accepts TCP connections (the kernel's backlog) but never speaks Postgres.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2)
        db.engine.cache_clear()
        try:
            began = time.monotonic()
            silent_db = db.engine(f"postgresql://postgres@127.0.0.1:{port}/nightshift")
            with pytest.raises(sa.exc.OperationalError, match="timeout"), silent_db.connect():
                pass
            elapsed = time.monotonic() - began
        finally:
            db.engine.cache_clear()
    assert 1.5 < elapsed < 15, elapsed
