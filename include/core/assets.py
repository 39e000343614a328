"""The DAG ids and the Assets that chain nightshift's DAGs: the names are the contract between them."""

from __future__ import annotations

from airflow.sdk import Asset

INGEST_DAG = "nightshift_ingest"
TRAIN_DAG = "nightshift_train"
DEPLOY_DAG = "nightshift_deploy"
MONITOR_DAG = "nightshift_monitor"
PREDICT_BATCH_DAG = "nightshift_predict_batch"
SERVING_HEALTH_DAG = "nightshift_serving_health"
BACKTEST_DAG = "nightshift_backtest"

FEATURES = Asset(name="features", uri="nightshift://features/flight_delay_v2", group="nightshift")
MODEL_CANDIDATE = Asset(name="model_candidate", uri="nightshift://models/flight_delay/candidate", group="nightshift")
MODEL_SERVING = Asset(name="model_serving", uri="nightshift://serving/flight_delay/stable", group="nightshift")
RETRAIN_REQUESTED = Asset(name="retrain_requested", uri="nightshift://models/flight_delay/retrain", group="nightshift")
