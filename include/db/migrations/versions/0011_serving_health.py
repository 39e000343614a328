"""Serving health: what each 5-minute check saw per arm, and the incidents (outages, error spells) it opened
and closed, at most one open per kind.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.create_table(
        "serving_health",
        sa.Column("checked_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("arm", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Integer),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("p50_ms", sa.Float),
        sa.Column("p99_ms", sa.Float),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "serving_incidents",
        sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_id", sa.BigInteger),
        sa.Column("recovered_at", sa.DateTime(timezone=True)),
        sa.Column("detail", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("serving_incidents_open", "serving_incidents", ["kind"], unique=True, schema=SCHEMA,
                    postgresql_where=sa.text("recovered_at IS NULL"))  # fmt: skip


def downgrade() -> None:
    op.drop_index("serving_incidents_open", "serving_incidents", schema=SCHEMA)
    op.drop_table("serving_incidents", schema=SCHEMA)
    op.drop_table("serving_health", schema=SCHEMA)
