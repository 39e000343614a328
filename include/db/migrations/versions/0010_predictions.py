"""Predictions for callers: the prediction service's API keys (hashed) and the served-prediction log's
batches (one Parquet file each, per flight day, version and arm).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("key_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("requests_per_minute", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_table(
        "served_batches",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("flight_date", sa.Date, nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("arm", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("served_batches_day", "served_batches", ["flight_date"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("served_batches_day", "served_batches", schema=SCHEMA)
    op.drop_table("served_batches", schema=SCHEMA)
    op.drop_table("api_keys", schema=SCHEMA)
