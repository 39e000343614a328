"""Alembic environment: online migrations only, version table inside the nightshift schema."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from include.db import SCHEMA, metadata, sqlalchemy_url

config = context.config
url = config.attributes["database_url"]
engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)

with engine.begin() as connection:
    # The version table lives in our schema, so it must exist before alembic looks for it.
    connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
