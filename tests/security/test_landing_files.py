"""Bad files dropped into the landing zone, as an upstream system (or whoever can write there) would drop them.

Each drop runs the real `nightshift_ingest` with `dag.test()` on Postgres. The attack is refused when the
collect task fails on its first try (a permanent error, so no retry burns minutes), the alert on-call gets
names the file and what is wrong, and nothing of the day reaches `raw/` or `clean/`.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa

from include import db
from include.core import lake
from include.ingest.collect import replay_flights

# A day of its own per attack, after the days other modules ingest.
ATTACKS = {
    # Seen before: retried twice (about 2 minutes) before failing on "missing columns", naming no file.
    "renamed column": (
        dt.date(2013, 11, 11),
        lambda rows: {"export.csv": rows.rename(columns={"dep_time": "departure_time"}).to_csv(index=False).encode()},
        r"export.csv: missing columns \['dep_time'\]; extra columns \['departure_time'\]",
    ),
    # Seen before: `UnicodeDecodeError … position 90242`, naming no file, retried.
    "Latin-1 export": (
        dt.date(2013, 11, 12),
        lambda rows: {
            "export.csv": rows.assign(dest=rows["dest"].where(rows.index != 700, "ZÜR"))
            .to_csv(index=False)
            .encode("latin-1")
        },
        r"export.csv: not UTF-8 text at row 701 \(column 'dest'\)",
    ),
    # Seen before: concatenated first, so b.csv's missing column silently became NaN and the run succeeded.
    "mixed column sets": (
        dt.date(2013, 11, 13),
        lambda rows: {
            "a.csv": rows.iloc[:400].to_csv(index=False).encode(),
            "b.csv": rows.iloc[400:].drop(columns="arr_delay").to_csv(index=False).encode(),
        },
        r"b.csv: missing columns \['arr_delay'\]",
    ),
}


@pytest.fixture
def ingest_dag(dagbag):
    return dagbag.get_dag("nightshift_ingest")


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_bad_landing_drop_fails_collect_once_naming_the_file(
    ingest_dag, lake_dir, db_url, monkeypatch, attack: str
) -> None:
    day, files, problem = ATTACKS[attack]
    monkeypatch.setenv("NIGHTSHIFT_SOURCE", "landing")
    folder = lake.partition_dir(lake_dir, "landing", "flights", day)
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files(replay_flights(day)).items():
        (folder / name).write_bytes(payload)

    run = ingest_dag.test(run_conf={"start_date": day.isoformat(), "end_date": day.isoformat()})

    instances = {ti.task_id: ti for ti in run.get_task_instances()}
    states = {task: str(ti.state) for task, ti in instances.items()}
    assert run.state == "failed", states
    assert states == {"collect": "failed", "clean": "upstream_failed", "validate": "upstream_failed",
                      "materialize": "upstream_failed", "rejected_days": "upstream_failed"}  # fmt: skip
    assert instances["collect"].try_number == 1  # failed at once: not retried
    with db.engine(db_url).connect() as conn:
        alert = conn.execute(
            sa.select(db.alerts.c.title, db.alerts.c.message).where(
                db.alerts.c.run_id == run.run_id, db.alerts.c.task_id == "collect"
            )
        ).one()
        collected = conn.execute(
            sa.select(sa.func.count()).select_from(db.ingestion_runs).where(db.ingestion_runs.c.run_id == run.run_id)
        ).scalar_one()
    assert "failed after 1 attempt(s)" in alert.title
    assert re.search(f"LandingFileError: landing/flights/date={day}/{problem}", alert.message), alert.message
    assert collected == 0
    for zone, dataset in [("raw", "flights"), ("raw", "weather"), ("clean", "flights"), ("quarantine", "flights")]:
        assert not lake.partition_dir(lake_dir, zone, dataset, day).exists(), (zone, dataset)
