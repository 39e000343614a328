"""A version records its SavedModel's content hash as the gate blessed it; deploy's push refuses other bytes.

Versions registered before this release have none (their artifacts may sit on a remote lake, out of
SQL's reach), and push refuses them with a message saying to retrain.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("artifact_sha256", sa.Text), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("model_versions", "artifact_sha256", schema=SCHEMA)
