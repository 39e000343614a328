"""Ingestion metadata: partition manifests, ingestion runs, quarantine counts, validation results.

Also creates the schemas Feast's SQL registry and Postgres online store write into, so the one
Postgres server holds Airflow (public), nightshift, feast_registry and feast_online side by side.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None

SCHEMA = "nightshift"


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS feast_registry")
    op.execute("CREATE SCHEMA IF NOT EXISTS feast_online")
    op.create_table(
        "partitions",
        sa.Column("dataset", sa.Text, primary_key=True),
        sa.Column("partition_date", sa.Date, primary_key=True),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("content_sha256", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "ingestion_runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("partition_date", sa.Date, primary_key=True),
        sa.Column("dag_id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("rows_raw", sa.Integer),
        sa.Column("rows_clean", sa.Integer),
        sa.Column("rows_quarantined", sa.Integer),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "rows_raw IS NULL OR rows_clean IS NULL OR rows_raw = rows_clean + rows_quarantined",
            name="rows_balance",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_ingestion_runs_date", "ingestion_runs", ["partition_date"], schema=SCHEMA)
    op.create_table(
        "quarantine_counts",
        sa.Column("partition_date", sa.Date, primary_key=True),
        sa.Column("reason", sa.Text, primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "validation_results",
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
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("validation_results", "quarantine_counts", "ingestion_runs", "partitions"):
        op.drop_table(table, schema=SCHEMA)
