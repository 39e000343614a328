"""Every table of nightshift's own schema, declared once.

The alembic migrations in `include/db/migrations/` create and evolve these tables (this module
never issues DDL); `tests/integration/test_schema.py` compares the two with alembic's
autogenerate and fails when they differ.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

SCHEMA = "nightshift"
FEAST_ONLINE_SCHEMA = "feast_online"

metadata = sa.MetaData(schema=SCHEMA)

# -- ingestion ------------------------------------------------------------------------------------

partitions = sa.Table(
    "partitions",
    metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("content_sha256", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
)

ingestion_runs = sa.Table(
    "ingestion_runs",
    metadata,
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
        "rows_raw IS NULL OR rows_clean IS NULL OR rows_raw = rows_clean + rows_quarantined", name="rows_balance"
    ),
    sa.Index("ix_ingestion_runs_date", "partition_date"),
)

quarantine_counts = sa.Table(
    "quarantine_counts",
    metadata,
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("reason", sa.Text, primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
)

validation_results = sa.Table(
    "validation_results",
    metadata,
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
)

# -- the model registry ---------------------------------------------------------------------------

MODEL_STATUSES = ("candidate", "blessed", "rejected", "canary", "production", "archived", "rolled_back")
DEPLOY_ACTIONS = ("push", "infra_validation", "canary", "promote", "rollback", "retire")
ALERT_SEVERITIES = ("critical", "warning", "info")

model_versions = sa.Table(
    "model_versions",
    metadata,
    # The version doubles as TF Serving's version directory: a monotonically increasing integer.
    sa.Column("version", sa.Integer, sa.Identity(start=1), primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("dag_id", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False, unique=True),
    sa.Column("code_version", sa.Text, nullable=False),
    sa.Column("artifact_uri", sa.Text, nullable=False),
    # What the gate blessed: include.train.gate.saved_model_sha256 of the export; push refuses other bytes.
    sa.Column("artifact_sha256", sa.Text),
    sa.Column("report_uri", sa.Text),
    # The test days' inputs, labels and predictions the monitor compares each new day with.
    sa.Column("reference_uri", sa.Text),
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
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in MODEL_STATUSES)})", name="known_status"),
)

gate_checks = sa.Table(
    "gate_checks",
    metadata,
    sa.Column("version", sa.Integer, sa.ForeignKey(model_versions.c.version), primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("observed", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("detail", sa.Text, nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, sa.ForeignKey(model_versions.c.version), nullable=False),
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
    sa.CheckConstraint(f"action IN ({', '.join(repr(a) for a in DEPLOY_ACTIONS)})", name="known_action"),
    sa.Index("deployments_model_created", "model", "created_at"),
)

# -- monitoring and alerts ------------------------------------------------------------------------

drift_reports = sa.Table(
    "drift_reports",
    metadata,
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
)

retrain_requests = sa.Table(
    "retrain_requests",
    metadata,
    # One request per monitored day at most; a retried judge rewrites it.
    sa.Column("partition_date", sa.Date, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    # When nightshift_monitor emitted the retrain_requested event; NULL: a retried judge emits it again.
    sa.Column("emitted_at", sa.DateTime(timezone=True)),
    sa.Index("retrain_requests_requested_at", "requested_at"),
)

alerts = sa.Table(
    "alerts",
    metadata,
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
    # The outbox (include.core.alerts): `uid` names the alert wherever it was recorded (a spooled one too) and
    # is its idempotency key at the receivers; NULL `delivered_at` = a channel is still to be sent, by
    # whoever holds the claim until `claimed_until`.
    sa.Column("uid", sa.Text),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("claimed_until", sa.DateTime(timezone=True)),
    sa.Column("claimed_by", sa.Text),
    sa.CheckConstraint(f"severity IN ({', '.join(repr(s) for s in ALERT_SEVERITIES)})", name="known_severity"),
    sa.UniqueConstraint("uid", name="alerts_uid_key"),
    sa.Index("alerts_kind_key_created", "kind", "dedup_key", "created_at"),
    sa.Index("alerts_pending", "id", postgresql_where=sa.text("delivered_at IS NULL")),
)

# -- lineage --------------------------------------------------------------------------------------

runs = sa.Table(
    "runs",
    metadata,
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
    sa.Column("outcome", sa.Text),  # what nightshift decided, e.g. "skipped: identical to v3"
    sa.Index("runs_run_id", "run_id"),
)

# -- predictions for callers ----------------------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    # sha256 of the whole key: the key itself is shown once, at creation, and stored nowhere.
    sa.Column("key_sha256", sa.Text, nullable=False, unique=True),
    sa.Column("prefix", sa.Text, nullable=False),  # the key's first characters, to tell keys apart in a list
    sa.Column("requests_per_minute", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

served_batches = sa.Table(
    "served_batches",
    metadata,
    # One Parquet file of the served-prediction log, per flight day, version and arm; its id names the file,
    # so a flush retried after a failure rewrites the same file and records it once.
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("flight_date", sa.Date, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("arm", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("served_batches_day", "flight_date"),
)

serving_health = sa.Table(
    "serving_health",
    metadata,
    # One row per health check and arm (`probe`: TF Serving's model status, whatever the traffic).
    sa.Column("checked_at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("arm", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Integer),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("p50_ms", sa.Float),
    sa.Column("p99_ms", sa.Float),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
)

serving_incidents = sa.Table(
    "serving_incidents",
    metadata,
    # An outage or error spell, from the check that saw it to the one that saw it over; its alert says so.
    sa.Column("id", sa.BigInteger, sa.Identity(start=1), primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("alert_id", sa.BigInteger),
    sa.Column("recovered_at", sa.DateTime(timezone=True)),
    sa.Column("detail", sa.Text, nullable=False),
    # At most one open incident of a kind: a retried or concurrent check cannot open a second (or alert twice).
    sa.Index("serving_incidents_open", "kind", unique=True, postgresql_where=sa.text("recovered_at IS NULL")),
)
