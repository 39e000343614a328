"""The training/serving skew check: a real day replayed hour by hour through the prediction service.

Before each hour the online store is materialized through that hour's start (what it would hold at that
moment of a live day), then every flight departing in the hour is scored online, by key, through the
service; each probability is compared with the offline pipeline's for the same flight: the point-in-time
features training joins, scored by the same model version (`score_offline`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from include.contract.features import EVENT_TIMESTAMP, flight_key

if TYPE_CHECKING:
    import pandas as pd

    from include.core.config import Settings

log = logging.getLogger(__name__)


def offline_frame(settings: Settings, day: dt.date) -> pd.DataFrame:
    """The day's labelled flights with their point-in-time features, as training and the monitor join them."""
    from include.core import lake
    from include.train.dataset import join_features, labelled_flights

    joined, _ = join_features(settings, labelled_flights(lake.lake_root(settings), [day]))
    joined["flight_key"] = [
        flight_key(day, *k) for k in joined[["carrier", "flight", "origin"]].itertuples(index=False)
    ]
    return joined


def callers_flights(settings: Settings, day: dt.date) -> dict[str, dict[str, Any]]:
    """The day's clean flights as a caller sends them (key and schedule only), by flight key."""
    from include.core import lake
    from include.predict.flights import schedule_requests

    clean = lake.read_parquet(lake.partition_file(lake.lake_root(settings), "clean", "flights", day))
    return {flight_key(day, f["carrier"], f["flight"], f["origin"]): f for f in schedule_requests(clean, day)}


def replay_parity(settings: Settings, day: dt.date, service_url: str, key: str,
                  score_offline: Callable[[pd.DataFrame], list[float]], hours: range = range(24),
                  materialize: bool = True, timeout_s: float = 120.0) -> dict[str, Any]:  # fmt: skip
    """Replay `hours` of `day`; returns flights and hours scored, the largest |online - offline| and the
    worst flight. The online store is left as it stood at the last hour's start (`materialize=False`:
    scored against the store as it stands, which is how the check is shown to fail)."""
    import pandas as pd

    from include.core.calendar import local_midnight_utc
    from include.core.feast import open_store
    from include.ingest.publish import materialize_window

    offline = offline_frame(settings, day)
    offline["p_offline"] = score_offline(offline)
    expected = offline.set_index("flight_key")["p_offline"]
    sent = callers_flights(settings, day)
    store = open_store(settings)
    midnight = local_midnight_utc(day)
    done = (midnight - pd.Timedelta(days=2)).to_pydatetime()
    departs = pd.to_datetime(offline[EVENT_TIMESTAMP], utc=True)
    worst: dict[str, Any] = {"diff": 0.0}
    scored, replayed = 0, 0
    with httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"}) as http:
        for hour in hours:
            start = midnight + pd.Timedelta(hours=hour)
            through = (start + pd.Timedelta(seconds=1)).to_pydatetime()
            if materialize:
                materialize_window(store, done, through)
                done = through
            in_hour = offline[(departs >= start) & (departs < start + pd.Timedelta(hours=1))]
            if in_hour.empty:
                continue
            response = http.post(
                f"{service_url}/v1/predict", json={"flights": [sent[k] for k in in_hour["flight_key"]]}
            )
            response.raise_for_status()
            for p in response.json()["predictions"]:
                diff = abs(p["p_delayed"] - expected[p["flight_key"]])
                if diff > worst["diff"]:
                    worst = {
                        "diff": diff,
                        "flight_key": p["flight_key"],
                        "online": p["p_delayed"],
                        "offline": float(expected[p["flight_key"]]),
                        "unknown": p["unknown"],
                        "hour": hour,
                    }
            scored += len(in_hour)
            replayed += 1
            log.info("parity %s %02d:00: %d flights, max |diff| so far %.2e", day, hour, len(in_hour), worst["diff"])
    return {"day": day.isoformat(), "flights": scored, "hours": replayed, "offline_flights": len(offline),
            "max_abs_diff": worst["diff"], "worst": worst}  # fmt: skip
