"""Alerts become an outbox: each is recorded pending, sent per channel, and marked delivered; a retrain
request records when its Asset event went out, so a retried judge emits one that never did.

Alerts and requests from before this release were sent and emitted as they were recorded: they are
marked so, and nothing old is sent again.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.add_column("alerts", sa.Column("uid", sa.Text), schema=SCHEMA)
    op.add_column("alerts", sa.Column("delivered_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("alerts", sa.Column("claimed_until", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("alerts", sa.Column("claimed_by", sa.Text), schema=SCHEMA)
    op.create_unique_constraint("alerts_uid_key", "alerts", ["uid"], schema=SCHEMA)
    op.execute(f"UPDATE {SCHEMA}.alerts SET delivered_at = created_at")
    op.create_index("alerts_pending", "alerts", ["id"], schema=SCHEMA, postgresql_where=sa.text("delivered_at IS NULL"))
    op.add_column("retrain_requests", sa.Column("emitted_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.execute(f"UPDATE {SCHEMA}.retrain_requests SET emitted_at = requested_at")


def downgrade() -> None:
    op.drop_column("retrain_requests", "emitted_at", schema=SCHEMA)
    op.drop_index("alerts_pending", "alerts", schema=SCHEMA)
    op.drop_constraint("alerts_uid_key", "alerts", schema=SCHEMA)
    for column in ("claimed_by", "claimed_until", "delivered_at", "uid"):
        op.drop_column("alerts", column, schema=SCHEMA)
