"""Lineage: every DAG run's form values (Params), trigger and data window, keyed like its products.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("dag_id", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("run_type", sa.Text, nullable=False),
        sa.Column("triggered_by", sa.Text),  # the UI/API user of a manual run
        sa.Column("params", JSONB, nullable=False),  # what the tasks saw: defaults merged with the conf
        sa.Column("conf", JSONB, nullable=False),  # what the trigger sent
        sa.Column("assets", JSONB, nullable=False),  # the asset events that triggered it
        sa.Column("logical_date", sa.DateTime(timezone=True)),
        sa.Column("data_interval_start", sa.DateTime(timezone=True)),
        sa.Column("data_interval_end", sa.DateTime(timezone=True)),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("runs_run_id", "runs", ["run_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("runs_run_id", "runs", schema=SCHEMA)
    op.drop_table("runs", schema=SCHEMA)
