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


def test_online_predictions_equal_the_offline_pipeline_hour_by_hour(settings, db_url, predict_service):
    export = settings.model_dir / str(predict_service.version)
    key = keys.create_key(db_url, f"parity-{time.time_ns()}", 100_000)
    _empty_online_store(db_url)
    result = replay_parity(settings, DAY, predict_service.url, key,
                           lambda frame: offline_predictions(export, serving_rows(frame)))  # fmt: skip
    print(f"parity: {result}")
    assert result["flights"] == result["offline_flights"] > 700
    assert result["hours"] >= 17
    assert result["max_abs_diff"] <= TOLERANCE, result["worst"]


def test_a_skewed_online_store_is_caught(settings, db_url, predict_service):
    """The check can fail: an online store materialized through the day's end (the evening's weather, and the
    day's own delay history, which no flight of the day may see) skews the morning's flights."""
    from include.core.calendar import end_of_day_utc, local_midnight_utc
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window

    export = settings.model_dir / str(predict_service.version)
    key = keys.create_key(db_url, f"skew-{time.time_ns()}", 100_000)
    materialize_window(open_store(settings), local_midnight_utc(DAY).to_pydatetime(),
                       (end_of_day_utc(DAY) + pd.Timedelta(seconds=1)).to_pydatetime())  # fmt: skip
    result = replay_parity(settings, DAY, predict_service.url, key,
                           lambda frame: offline_predictions(export, serving_rows(frame)), hours=range(6, 9),
                           materialize=False)  # fmt: skip
    assert result["flights"] > 100
    assert result["max_abs_diff"] > 10 * TOLERANCE, result
