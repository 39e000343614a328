"""The replay clock: how the scheduler's nights map onto 2013 after `make demo`.

The demo ingests 2013 days (the bootstrap, then the monitored week). When `bin/nightshift airflow`
first starts, it fixes the clock in `.local/airflow/replay_clock.json`: the night before the start
(the one the scheduler runs at once, catchup being off) replays the day after the latest published
day, and each later night the next day. So the first scheduled night ingests new data, trains on a
window that continues the demo's (no empty splits), deploys if blessed, and monitors; the mapping
survives restarts. Setting NIGHTSHIFT_REPLAY_START and NIGHTSHIFT_REPLAY_FIRST_DAY overrides it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from include.core.config import Settings
from include.ops.runtime import airflow_home


def clock_file(settings: Settings) -> Path:
    return airflow_home(settings) / "replay_clock.json"


def replay_clock(settings: Settings, database_url: str, today: dt.date) -> dict[str, str]:
    """The clock's NIGHTSHIFT_REPLAY_* variables, fixed on first use (nothing for a non-replay source)."""
    if settings.source != "replay":
        return {}
    if settings.replay_start and settings.replay_first_day:
        return {"NIGHTSHIFT_REPLAY_START": settings.replay_start.isoformat(),
                "NIGHTSHIFT_REPLAY_FIRST_DAY": settings.replay_first_day.isoformat()}  # fmt: skip
    return fixed_clock(settings, database_url, today - dt.timedelta(days=1))


def fixed_clock(settings: Settings, database_url: str, start: dt.date) -> dict[str, str]:
    """The clock in the clock file; on first use the night `start` replays the day after the latest
    published one, and that is written down (`make airflow` and `make nights` share the file)."""
    from include.ingest.records import published_days
    from include.ops.auth import write_private

    path = clock_file(settings)
    if path.exists():
        return json.loads(path.read_text())
    published = published_days(database_url)
    first = max(published) + dt.timedelta(days=1) if published else settings.bootstrap_start
    clock = {"NIGHTSHIFT_REPLAY_START": start.isoformat(), "NIGHTSHIFT_REPLAY_FIRST_DAY": first.isoformat()}
    write_private(path, json.dumps(clock, indent=2))  # atomic: a half-written clock would remap every night
    return clock
