"""The nightly chain's deadline is anchored to the New York night whose data a run processes, not to when
the run was queued (plugins/nightshift_deadlines.py). Night D = 2026-11-22 (EST) is due 2026-11-23 06:00 UTC."""

from __future__ import annotations

import datetime as dt

import airflow.settings  # noqa: F401 (puts [core] plugins_folder on sys.path, as in every Airflow process)
import pytest
from nightshift_deadlines import DailyUtcDeadline, event_night, interval_night, latest, night_cutoff, night_end

UTC = dt.UTC
NIGHT = dt.date(2026, 11, 22)
DUE = dt.datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
REFERENCE = DailyUtcDeadline(hour=6, minute=0)


def at(month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_a_run_queued_at_0559_utc_is_due_at_0600_the_same_morning() -> None:
    assert REFERENCE.deadline_for(NIGHT, queued=at(11, 23, 5, 59)) == DUE


def test_a_run_queued_at_0605_utc_is_already_late_not_due_the_next_day() -> None:
    """Today's code gave 2026-11-24 06:00 UTC (the first 06:00 after queuing): ~24 h of silence."""
    deadline = REFERENCE.deadline_for(NIGHT, queued=at(11, 23, 6, 5))
    assert deadline == DUE
    assert deadline < at(11, 23, 6, 5)  # the scheduler fires the alert on its next loop


def test_a_late_rerun_of_an_old_night_gets_no_chain_deadline() -> None:
    """A re-ingest of night D five days later: tonight's own run carries tonight's deadline; this one pages nobody.
    Today's code gave it the next 06:00 UTC after queuing, as if it were tonight's chain."""
    assert REFERENCE.deadline_for(NIGHT, queued=at(11, 27, 14)) is None
    # Up to a day after the cutoff the night's chain is late, not old: the alert fires at once.
    assert REFERENCE.deadline_for(NIGHT, queued=at(11, 24, 5, 59)) == DUE


def test_a_second_run_of_a_night_already_done_does_not_page() -> None:
    """E.g. the 02:00 New York cron run of the train DAG after the Asset-triggered run trained the night."""
    assert REFERENCE.deadline_for(NIGHT, queued=at(11, 23, 7), night_done=True) is None
    assert REFERENCE.deadline_for(NIGHT, queued=at(11, 23, 7), night_done=False) == DUE
    assert REFERENCE.deadline_for(NIGHT, queued=at(11, 23, 3), night_done=True) == DUE


def test_a_run_of_no_night_is_due_at_the_next_cutoff_after_queuing() -> None:
    """A manual run (an analyst's training): as before, the first 06:00 UTC after it was queued."""
    assert REFERENCE.deadline_for(None, queued=at(11, 23, 14)) == at(11, 24, 6)
    assert REFERENCE.deadline_for(None, queued=at(11, 23, 5)) == at(11, 23, 6)


@pytest.mark.parametrize(
    ("night", "ends", "due"),
    [(dt.date(2026, 11, 22), at(11, 23, 5), at(11, 23, 6)),   # EST: New York midnight is 05:00 UTC
     (dt.date(2026, 7, 10), at(7, 11, 4), at(7, 11, 6))],     # EDT: 04:00 UTC
)  # fmt: skip
def test_a_night_is_due_at_the_first_cutoff_after_it_ends_in_new_york(night, ends, due) -> None:
    assert night_end(night) == ends
    assert night_cutoff(night, 6, 0) == due


def test_a_cutoff_before_the_night_ends_in_utc_falls_on_the_next_day() -> None:
    assert night_cutoff(NIGHT, 4, 30) == at(11, 24, 4, 30)  # 04:30 UTC is still the evening of the 22nd
    assert night_cutoff(dt.date(2026, 7, 10), 4, 30) == at(7, 11, 4, 30)


def test_the_night_of_a_scheduled_run_is_the_day_its_data_interval_closes() -> None:
    assert interval_night(at(11, 23, 5)) == NIGHT  # ingest: [22 Nov 00:00, 23 Nov 00:00) New York
    assert interval_night(at(7, 11, 4)) == dt.date(2026, 7, 10)
    assert interval_night(at(11, 23, 7)) == NIGHT  # train's cron run at 02:00 New York on the 23rd


def test_the_night_of_an_asset_triggered_run_is_the_latest_its_features_events_name() -> None:
    extras = [{"first_day": "2026-11-20", "last_day": "2026-11-21"}, {"last_day": "2026-11-22"}, {"version": 3}, None]
    assert [event_night(e) for e in extras] == [dt.date(2026, 11, 21), NIGHT, None, None]
    assert latest(event_night(e) for e in extras) == NIGHT
    assert latest([None]) is None
    assert event_night({"last_day": "yesterday"}) is None


def test_the_reference_round_trips_through_serialization() -> None:
    data = DailyUtcDeadline(hour=5, minute=30).serialize_reference()
    assert data == {"reference_type": "DailyUtcDeadline", "hour": 5, "minute": 30}
    assert DailyUtcDeadline.deserialize_reference(data) == DailyUtcDeadline(hour=5, minute=30)


class _Session:
    def __init__(self, run) -> None:
        self.run = run

    def scalar(self, _query):
        return self.run


def test_the_ingest_deadline_counts_from_queuing_and_skips_backfills() -> None:
    """`RunQueuedAt` stands in for Airflow's DAGRUN_QUEUED_AT, which 3.3.2 cannot clear a run with."""
    from types import SimpleNamespace

    from airflow.utils.types import DagRunType
    from nightshift_deadlines import RunQueuedAt

    queued = dt.datetime(2026, 11, 30, 5, 2, tzinfo=dt.UTC)
    reference = RunQueuedAt()
    scheduled = SimpleNamespace(run_type=DagRunType.SCHEDULED, queued_at=queued, run_after=queued)
    assert reference._evaluate_with(session=_Session(scheduled), dag_id="d", run_id="r") == queued
    backfill = SimpleNamespace(run_type=DagRunType.BACKFILL_JOB, queued_at=queued, run_after=queued)
    assert reference._evaluate_with(session=_Session(backfill), dag_id="d", run_id="r") is None
    assert RunQueuedAt.deserialize_reference(reference.serialize_reference()) == reference
    assert reference.serialize_reference()["reference_type"] != "DagRunQueuedAtDeadline"
