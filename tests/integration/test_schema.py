"""The tables declared in `include.db.tables` are exactly what the migrations build (alembic autogenerate)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from include.db import SCHEMA, metadata, sqlalchemy_url


def _differences(db_url: str, target: sa.MetaData) -> list:
    engine = sa.create_engine(sqlalchemy_url(db_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_schemas": True, "version_table_schema": SCHEMA, "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, kind, _: kind != "schema" or name == SCHEMA,
            })  # fmt: skip
            return compare_metadata(context, target)
    finally:
        engine.dispose()


def test_declared_tables_match_the_migrated_database(db_url) -> None:
    assert _differences(db_url, metadata) == []


def test_a_declaration_the_migrations_lack_is_found(db_url) -> None:
    """The comparison can fail: a column declared but never migrated shows up as a difference."""
    drifted = sa.MetaData(schema=SCHEMA)
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables[f"{SCHEMA}.alerts"].append_column(sa.Column("acknowledged_by", sa.Text))
    diffs = _differences(db_url, drifted)
    assert [(d[0], d[3].name) for d in diffs if isinstance(d, tuple)] == [("add_column", "acknowledged_by")]
