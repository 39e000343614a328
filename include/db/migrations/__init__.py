"""Alembic migrations for the `nightshift` schema; apply with `include.db.migrations.upgrade`."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring nightshift's schema (and the schemas Feast writes into) up to `revision`."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["database_url"] = database_url
    command.upgrade(cfg, revision)
