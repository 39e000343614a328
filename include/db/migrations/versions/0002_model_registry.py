"""Model registry: versions with lineage and status, and the gate checks behind each verdict.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"

SCHEMA = "nightshift"
STATUSES = ("candidate", "blessed", "rejected", "canary", "production", "archived", "rolled_back")


def upgrade() -> None:
    op.create_table(
        "model_versions",
        # The version doubles as TF Serving's version directory: a monotonically increasing integer.
        sa.Column("version", sa.Integer, sa.Identity(start=1), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("dag_id", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False, unique=True),
        sa.Column("code_version", sa.Text, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("report_uri", sa.Text),
        sa.Column("dataset_uri", sa.Text, nullable=False),
        sa.Column("dataset_sha256", sa.Text, nullable=False),
        sa.Column("data_window", JSONB, nullable=False),
        sa.Column("feature_service", sa.Text, nullable=False),
        sa.Column("feast_registry_version", sa.Text, nullable=False),
        sa.Column("ingestion_run_ids", JSONB, nullable=False),
        sa.Column("validation_run_ids", JSONB, nullable=False),
        sa.Column("metrics", JSONB, nullable=False),
        sa.Column("hyperparameters", JSONB, nullable=False),
        sa.Column("params", JSONB, nullable=False),
        sa.Column("gate_note", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="known_status"),
        schema=SCHEMA,
    )
    op.create_table(
        "gate_checks",
        sa.Column("version", sa.Integer, sa.ForeignKey(f"{SCHEMA}.model_versions.version"), primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("observed", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("detail", sa.Text, nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("gate_checks", schema=SCHEMA)
    op.drop_table("model_versions", schema=SCHEMA)
