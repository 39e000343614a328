"""A run records its outcome where nightshift decided one: a training skipped as identical to an
existing version says so (`skipped: identical to v3`).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.add_column("runs", sa.Column("outcome", sa.Text), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("runs", "outcome", schema=SCHEMA)
