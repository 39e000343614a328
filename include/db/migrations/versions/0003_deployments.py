"""Deployments: every serving state change (push, infra validation, canary, promote, rollback, retire).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"

SCHEMA = "nightshift"
ACTIONS = ("push", "infra_validation", "canary", "promote", "rollback", "retire")


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, sa.ForeignKey(f"{SCHEMA}.model_versions.version"), nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("succeeded", sa.Boolean, nullable=False),
        # The labels as they stand after this change (a failure leaves them as they were).
        sa.Column("stable_version", sa.Integer),
        sa.Column("canary_version", sa.Integer),
        sa.Column("previous_stable_version", sa.Integer),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", JSONB, nullable=False),
        sa.Column("dag_id", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"action IN ({', '.join(repr(a) for a in ACTIONS)})", name="known_action"),
        schema=SCHEMA,
    )
    op.create_index("deployments_model_created", "deployments", ["model", "created_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("deployments_model_created", "deployments", schema=SCHEMA)
    op.drop_table("deployments", schema=SCHEMA)
