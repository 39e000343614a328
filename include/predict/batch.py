"""Batch prediction for analysts (`nightshift_predict_batch`): a day's scheduled flights scored by `stable`.

The flights come from the replay, with no label and no post-departure column, or from a file an upstream
system dropped under `{lake}/landing/scheduled/` (CSV or Parquet with the schedule's columns). They are
turned into the service's flights (`include/predict/flights.py`), their features read from Feast's online
store, and scored through serving's REST API in batches, at the version `stable` points at when the run
starts (no TensorFlow in the worker). The output, `{lake}/predictions/scheduled/date=…/part-0.parquet`,
says which version scored it; a rerun replaces it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from include.contract.features import POST_DEPARTURE_COLUMNS
from include.core import lake
from include.core.errors import PermanentError

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

    from include.core.config import Settings

log = logging.getLogger(__name__)

SCHEDULE_COLUMNS = ["carrier", "flight", "origin", "dest", "tailnum", "sched_dep_time", "sched_arr_time"]
LANDING_FOLDER = "landing/scheduled"
BATCH_SIZE = 500


class BatchError(PermanentError):
    """The batch cannot be scored as asked (no such file, a file without the schedule's columns, no model)."""


def output_file(root: ObjectStoragePath, day: dt.date) -> ObjectStoragePath:
    return lake.partition_file(root, "predictions", "scheduled", day)


def landing_file(root: ObjectStoragePath, name: str) -> ObjectStoragePath:
    """`name` under `{lake}/landing/scheduled/`: one plain file name, never a path of the caller's choosing."""
    if not name or name != lake.safe_name(name) or not name.endswith((".csv", ".parquet")):
        raise BatchError(f"landing file {name!r}: give a plain file name under {LANDING_FOLDER}/ ending in .csv "
                         "or .parquet (letters, digits, '-', '_' and '.')")  # fmt: skip
    path = root / LANDING_FOLDER / name
    if not path.exists():
        raise BatchError(f"no file {LANDING_FOLDER}/{name} in the lake")
    return path


def scheduled_flights(settings: Settings, day: dt.date, file_name: str | None = None) -> pd.DataFrame:
    """The day's scheduled flights: the replay's (labels and post-departure columns dropped) or a landing file's."""
    import io

    import pandas as pd

    from include.ingest.collect import replay_flights

    if file_name:
        path = landing_file(lake.lake_root(settings), file_name)
        data = io.BytesIO(path.read_bytes())
        frame = pd.read_parquet(data) if file_name.endswith(".parquet") else pd.read_csv(data)
        missing = [c for c in SCHEDULE_COLUMNS if c not in frame.columns]
        if missing:
            raise BatchError(f"{LANDING_FOLDER}/{file_name}: missing columns {', '.join(missing)}")
    else:
        frame = replay_flights(day)
    frame = frame.drop(columns=[c for c in POST_DEPARTURE_COLUMNS if c in frame.columns])
    return frame[SCHEDULE_COLUMNS].reset_index(drop=True)


def score_scheduled(settings: Settings, day: dt.date, schedule: pd.DataFrame) -> dict[str, Any]:
    """Score the schedule with `stable`; write the output; returns what was written."""
    import numpy as np
    import pandas as pd
    from pydantic import ValidationError

    from include.contract.features import MODEL_FEATURES
    from include.contract.inputs import serving_columns
    from include.predict.flights import Flight, entity_rows, schedule_requests
    from include.predict.online import lookup, open_online_store
    from include.serving.client import client_for

    flights, refused = [], []
    for request in schedule_requests(schedule, day):
        try:
            flights.append(Flight(**request))
        except ValidationError as err:
            refused.append(f"{request['carrier']}{request['flight']}: {err.errors()[0]['msg']}")
    if not flights:
        raise BatchError(f"{day}: no flight to score ({len(refused)} refused: {'; '.join(refused[:3])})")
    entities, unknown = entity_rows(flights)
    frame, missing = lookup(open_online_store(settings, max_connections=1), entities)
    with client_for(settings) as client:
        version = int(client.status(label="stable")[0]["version"])
        predictions: list[float] = []
        for start in range(0, len(frame), BATCH_SIZE):
            batch = frame.iloc[start : start + BATCH_SIZE]
            predictions += [float(p) for p in np.ravel(client.predict_columns(serving_columns(batch), version=version))]
            log.info("%s: %d/%d flights scored by version %d", day, len(predictions), len(frame), version)
    out = pd.DataFrame({
        "flight_key": [f.key for f in flights], "carrier": [f.carrier for f in flights],
        "flight": [f.flight for f in flights], "origin": [f.origin for f in flights],
        "dest": [f.dest for f in flights], "sched_dep": [f.sched_dep.isoformat() for f in flights],
        "tailnum": [f.tailnum or "" for f in flights], "p_delayed": predictions, "model_version": version,
        "unknown": ["; ".join(a + b) for a, b in zip(unknown, missing, strict=True)],
    })  # fmt: skip
    out = pd.concat([out, frame[MODEL_FEATURES].add_prefix("feature_").reset_index(drop=True)], axis=1)
    target = output_file(lake.lake_root(settings), day)
    lake.write_parquet(target, out)
    return {"day": day.isoformat(), "flights": len(out), "refused": len(refused), "refused_examples": refused[:5],
            "model_version": version, "mean_p_delayed": round(float(np.mean(predictions)), 4),
            "uri": lake.uri(target)}  # fmt: skip


def default_day(url: str) -> dt.date:
    """Tomorrow, in the data's calendar: the day after the latest day ingested."""
    import sqlalchemy as sa

    from include.db import engine, partitions

    with engine(url).connect() as conn:
        last = conn.execute(sa.select(sa.func.max(partitions.c.partition_date))).scalar()
    if last is None:
        raise BatchError("nothing is ingested yet; give a date")
    return last + dt.timedelta(days=1)


def list_outputs(settings: Settings) -> list[dict[str, Any]]:
    """The scheduled-flight predictions written so far, newest day first (for the ML Ops view)."""
    folder = lake.lake_root(settings) / "predictions" / "scheduled"
    if not folder.exists():
        return []
    found = []
    for part in sorted(folder.iterdir(), key=str, reverse=True):
        name = part.name
        if name.startswith("date=") and (part / lake.PARTITION_FILE).exists():
            found.append({"day": name.removeprefix("date="), "uri": lake.uri(part / lake.PARTITION_FILE)})
    return found
