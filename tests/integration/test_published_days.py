"""Only validated days are published, and each day of a range stands alone (issue 13, defect 4).

A range whose middle day fails its critical checks publishes the other days, withdraws the bad
one, and fails the run at once (no retries) naming it; a day re-ingested and rejected after an
earlier success stops counting as validated; training refuses a window whose days lack
published features, naming them, and its manifest lists the validation run of every day it read.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from include.core import lake
from include.core.config import load_settings
from include.ingest import records
from include.ingest.collect import replay_flights

DAYS = [dt.date(2013, 10, d) for d in (8, 9, 10)]
BAD = DAYS[1]
VIEWS = ("origin_weather_hourly", "carrier_delay_history", "plane_attributes")


def _drop(lake_dir, day: dt.date, frame: pd.DataFrame) -> None:
    folder = lake.partition_dir(lake_dir, "landing", "flights", day)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.csv").write_text(frame.to_csv(index=False))


def _states(run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances()}


def _published_files(lake_dir, day: dt.date) -> list[str]:
    return [v for v in VIEWS if (lake_dir / "features" / v / f"{day}.parquet").exists()]


@pytest.fixture(scope="module")
def mixed_range(dagbag, lake_dir):
    """DAYS ingested from landing files; the middle day's export has a header and no rows."""
    for day in DAYS:
        flights = replay_flights(day)
        _drop(lake_dir, day, flights.iloc[:0] if day == BAD else flights)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_SOURCE", "landing")
        return dagbag.get_dag("nightshift_ingest").test(
            run_conf={"start_date": DAYS[0].isoformat(), "end_date": DAYS[-1].isoformat()}
        )


def test_a_rejected_day_fails_alone_and_the_rest_of_the_range_is_published(mixed_range, lake_dir, db_url) -> None:
    states = _states(mixed_range)
    assert mixed_range.state == "failed"
    assert states["validate"][0] == "success"
    assert states["materialize"][0] == "success"
    assert states["rejected_days"] == ("failed", 1)  # permanent: no retry
    assert _published_files(lake_dir, DAYS[0]) == list(VIEWS)
    assert _published_files(lake_dir, DAYS[2]) == list(VIEWS)
    assert _published_files(lake_dir, BAD) == []
    assert set(records.published_days(db_url, DAYS)) == {DAYS[0], DAYS[2]}
    materialized = mixed_range.get_task_instance("materialize").xcom_pull(task_ids="materialize")
    assert materialized["published_days"] == [DAYS[0].isoformat(), DAYS[2].isoformat()]
    assert materialized["skipped_days"] == [BAD.isoformat()]


def test_monitoring_skips_a_rejected_day(mixed_range, db_url) -> None:
    from include.monitor.steps import resolve_days

    window = [[DAYS[0].isoformat(), DAYS[-1].isoformat()]]
    assert resolve_days({}, window, db_url) == [DAYS[0], DAYS[2]]
    # A range asked for in the form is monitored as asked (a day without data fails at score, naming it).
    assert resolve_days({"start_date": BAD.isoformat(), "end_date": BAD.isoformat()}, [], db_url) == [BAD]


def test_a_day_rejected_after_an_earlier_success_is_withdrawn(mixed_range, dagbag, lake_dir, db_url,
                                                              monkeypatch) -> None:  # fmt: skip
    day = DAYS[0]
    assert day in records.published_days(db_url, [day])
    _drop(lake_dir, day, replay_flights(day).iloc[:0])  # the upstream re-sends the day, empty
    monkeypatch.setenv("NIGHTSHIFT_SOURCE", "landing")
    run = dagbag.get_dag("nightshift_ingest").test(
        run_conf={"start_date": day.isoformat(), "end_date": day.isoformat()}
    )
    assert run.state == "failed"
    assert _states(run)["validate"] == ("failed", 1)
    assert records.published_days(db_url, [day]) == {}
    assert _published_files(lake_dir, day) == []


def test_training_refuses_a_window_whose_days_are_not_published(mixed_range, db_url) -> None:
    from include.train.dataset import DatasetError
    from include.train.steps import build_dataset

    params = {"end_date": DAYS[-1].isoformat(), "train_days": 7, "test_days": 2}
    with pytest.raises(DatasetError) as refused:
        build_dataset(load_settings(), params, "manual__coverage")
    message = str(refused.value)
    assert BAD.isoformat() in message
    assert "no published features" in message
    assert refused.value.__class__.__mro__[1].__name__ == "PermanentError"


def test_the_manifest_lists_the_validation_run_that_passed_every_day(trained, db_url) -> None:
    import sqlalchemy as sa

    from include import db

    _, row, _ = trained
    manifest = json.loads((lake.at(load_settings(), row["dataset_uri"]) / "manifest.json").read_text())
    window = manifest["window"]
    days = pd.date_range(window["start"], window["end"]).date
    assert list(manifest["days"]) == [d.isoformat() for d in days]
    assert manifest["excluded_days"] == []
    v = db.validation_results
    with db.engine(db_url).connect() as conn:
        passed = set(conn.execute(sa.select(v.c.partition_date, v.c.run_id).where(v.c.success)).all())
    for day, validation_run in manifest["days"].items():
        assert (dt.date.fromisoformat(day), validation_run) in passed


def test_a_rejected_days_outcomes_feed_no_later_days_history(mixed_range, db_url) -> None:
    """History features (7-day delay rates) of the days after BAD read no stats of BAD: its latest
    validation failed. A new ingestion of BAD itself lets it count again, as its old verdict was on
    other data."""
    from include.ingest.clean import history_window
    from include.ingest.steps import history_days

    after = BAD + dt.timedelta(days=1)
    window = history_window(after)
    # Other tests of this module reject more days of the window (DAYS[0] in the next one).
    others = records.rejected_days(db_url, window) - {BAD}
    assert BAD in window
    assert BAD not in history_days(db_url, after, cleaning=[])
    assert set(history_days(db_url, after, cleaning=[])) == set(window) - {BAD} - others
    assert BAD in history_days(db_url, after, cleaning=[BAD])
    # A week on, BAD has left the window.
    later = BAD + dt.timedelta(days=8)
    assert BAD not in history_window(later)
    assert set(history_days(db_url, later, cleaning=[])) == set(history_window(later)) - others
