"""Training/serving skew, as TFX and Vertex check it: a real day replayed hour by hour
(`include/predict/parity.py`). Before each hour the online store is materialized through that hour's start,
then every flight departing in the hour is scored online, by key, through the prediction service; each
probability must equal the offline pipeline's for the same flight (point-in-time features, then the same
SavedModel, in-process here) within 1e-4."""

from __future__ import annotations

import datetime as dt
import time

import pandas as pd
import sqlalchemy as sa

from include import db
from include.contract.inputs import serving_rows
from include.deploy.savedmodel import offline_predictions
from include.predict import keys
from include.predict.parity import replay_parity

DAY = dt.date(2013, 7, 30)
TOLERANCE = 1e-4


def _empty_online_store(url: str) -> None:
    """Nothing materialized before this test (other days, other tests) may answer for this day."""
    with db.engine(url).begin() as conn:
        tables = conn.execute(sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                              {"s": db.FEAST_ONLINE_SCHEMA}).scalars().all()  # fmt: skip
        for table in tables:
            conn.execute(sa.text(f'TRUNCATE {db.FEAST_ONLINE_SCHEMA}."{table}"'))


def test_online_predictions_equal_the_offline_pipeline_hour_by_hour(settings, db_url, serving, predict_service):
    export = serving.model_dir / str(predict_service.version)  # the serving fixture's folder, not the session's
    key = keys.create_key(db_url, f"parity-{time.time_ns()}", 100_000)
    _empty_online_store(db_url)
    result = replay_parity(settings, DAY, predict_service.url, key,
                           lambda frame: offline_predictions(export, serving_rows(frame)))  # fmt: skip
    print(f"parity: {result}")
    assert result["flights"] == result["offline_flights"] > 700
    assert result["hours"] >= 17
    assert result["max_abs_diff"] <= TOLERANCE, result["worst"]


def test_a_skewed_online_store_is_caught(settings, db_url, serving, predict_service):
    """The check can fail: an online store materialized through the day's end (the evening's weather, and the
    day's own delay history, which no flight of the day may see) skews the morning's flights."""
    from include.core.calendar import end_of_day_utc, local_midnight_utc
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window

    export = serving.model_dir / str(predict_service.version)  # the serving fixture's folder, not the session's
    key = keys.create_key(db_url, f"skew-{time.time_ns()}", 100_000)
    materialize_window(open_store(settings), local_midnight_utc(DAY).to_pydatetime(),
                       (end_of_day_utc(DAY) + pd.Timedelta(seconds=1)).to_pydatetime())  # fmt: skip
    result = replay_parity(settings, DAY, predict_service.url, key,
                           lambda frame: offline_predictions(export, serving_rows(frame)), hours=range(6, 9),
                           materialize=False)  # fmt: skip
    assert result["flights"] > 100
    assert result["max_abs_diff"] > 10 * TOLERANCE, result


def test_the_monitor_judges_what_was_served_and_alerts_once_on_the_skew(settings, db_url, predict_service):
    """After the two replays the log holds, per flight of the day, what the service answered last: the morning's
    skewed answers and the rest's exact ones. The monitor scores the day from them, at the version that served
    them, measures the skew against the offline features, and raises one alert for it, however often it judges."""
    from include.core import lake
    from include.core.config import MonitorPolicy
    from include.monitor.steps import judge, predictions_file, report_day, score_day

    predict_service.app.state.service.log.flush()
    policy = MonitorPolicy.from_env()
    scored = score_day(settings, policy, DAY, "manual__served-monitor")
    assert scored["source"] == "served"
    assert scored["model_version"] == predict_service.version
    logged = lake.read_parquet(predictions_file(settings, DAY))
    assert len(logged) == scored["rows"] > 700
    skew = scored["skew"]
    assert skew["flights"] == scored["rows"]
    assert 0.05 < skew["share"] < 0.6, skew  # the 06:00-09:00 flights, not the others
    assert set(skew["features"]) & {"temp", "dewp", "humid", "carrier_delay_rate_7d", "origin_delay_rate_7d"}
    summary = report_day(settings, policy, scored, "manual__served-monitor")
    assert summary["source"] == "served"
    for _ in range(2):
        judge(settings, policy, [summary], "manual__served-monitor")
    with db.engine(db_url).connect() as conn:
        raised = conn.execute(sa.select(sa.func.count()).select_from(db.alerts).where(
            db.alerts.c.kind == "serving_skew", db.alerts.c.dedup_key == DAY.isoformat())).scalar_one()  # fmt: skip
    assert raised == 1


def test_the_skew_check_holds_on_the_redis_online_store(settings, db_url, serving, predict_service):
    """`NIGHTSHIFT_ONLINE_STORE=redis`: the same day, materialized hour by hour into the machine's Redis (a
    database of its own, emptied first), scored by a service reading Redis, equals the offline pipeline."""
    import os

    import redis

    from include.core.config import PredictService, load_settings
    from include.predict.app import running

    address = "127.0.0.1:6379,db=3"
    redis.Redis(host="127.0.0.1", port=6379, db=3, socket_timeout=5).flushdb()
    on_redis = load_settings({**os.environ, "NIGHTSHIFT_ONLINE_STORE": "redis", "NIGHTSHIFT_REDIS": address})
    export = serving.model_dir / str(predict_service.version)  # the serving fixture's folder, not the session's
    key = keys.create_key(db_url, f"parity-redis-{time.time_ns()}", 100_000)
    with running(on_redis, PredictService(state_ttl_s=0.2, log_served=0)) as (url, _):
        result = replay_parity(on_redis, DAY, url, key, lambda frame: offline_predictions(export, serving_rows(frame)))
    print(f"parity on redis: {result}")
    assert result["flights"] == result["offline_flights"] > 700
    assert result["max_abs_diff"] <= TOLERANCE, result["worst"]
    assert redis.Redis(host="127.0.0.1", port=6379, db=3, socket_timeout=5).dbsize() > 100  # it was Redis that answered
