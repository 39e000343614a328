"""Monitoring: drift and quality metrics per day, and every alert sent to on-call.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("partition_date", sa.Date, primary_key=True),
        sa.Column("metric", sa.Text, primary_key=True),
        sa.Column("feature", sa.Text, primary_key=True, server_default=""),  # "" for day-level metrics
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("crossed", sa.Boolean, nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("report_uri", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("dedup_key", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("link", sa.Text),
        sa.Column("dag_id", sa.Text),
        sa.Column("task_id", sa.Text),
        sa.Column("run_id", sa.Text),
        sa.Column("deliveries", JSONB, nullable=False),
        sa.CheckConstraint("severity IN ('critical', 'warning', 'info')", name="known_severity"),
        schema=SCHEMA,
    )
    op.create_index("alerts_kind_key_created", "alerts", ["kind", "dedup_key", "created_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("alerts_kind_key_created", "alerts", schema=SCHEMA)
    op.drop_table("alerts", schema=SCHEMA)
    op.drop_table("drift_reports", schema=SCHEMA)
