"""Retraining requests get their own table (they were rows of drift_reports with the reason in
`feature`), and a version records where its monitoring reference is.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

SCHEMA = "nightshift"


def upgrade() -> None:
    op.create_table(
        "retrain_requests",
        sa.Column("partition_date", sa.Date, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("report_uri", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("retrain_requests_requested_at", "retrain_requests", ["requested_at"], schema=SCHEMA)
    op.execute(f"""
        INSERT INTO {SCHEMA}.retrain_requests (partition_date, reason, model_version, report_uri, run_id, requested_at)
        SELECT DISTINCT ON (partition_date) partition_date, feature, model_version, report_uri, run_id, computed_at
        FROM {SCHEMA}.drift_reports WHERE metric = 'retrain_requested' ORDER BY partition_date, computed_at DESC
    """)  # fmt: skip
    op.execute(f"DELETE FROM {SCHEMA}.drift_reports WHERE metric = 'retrain_requested'")
    op.add_column("model_versions", sa.Column("reference_uri", sa.Text), schema=SCHEMA)
    # Versions trained before this release saved their reference beside the SavedModel folder.
    op.execute(f"""
        UPDATE {SCHEMA}.model_versions
        SET reference_uri = regexp_replace(rtrim(artifact_uri, '/'), '/[^/]*$', '') || '/reference.parquet'
        WHERE reference_uri IS NULL
    """)


def downgrade() -> None:
    op.drop_column("model_versions", "reference_uri", schema=SCHEMA)
    op.execute(f"""
        INSERT INTO {SCHEMA}.drift_reports (partition_date, metric, feature, value, threshold, crossed, model_version,
                                            rows, report_uri, run_id, computed_at)
        SELECT partition_date, 'retrain_requested', left(reason, 200), 1.0, NULL, true, model_version, 0, report_uri,
               run_id, requested_at FROM {SCHEMA}.retrain_requests
    """)  # fmt: skip
    op.drop_index("retrain_requests_requested_at", "retrain_requests", schema=SCHEMA)
    op.drop_table("retrain_requests", schema=SCHEMA)
