"""Training sets: flights of a window joined point-in-time to Feast features, split by time.

The entity frame carries what is known at scheduling time (carrier, route, distance, hours…);
`get_historical_features` with the versioned FeatureService adds weather, delay history and plane
attributes as of each scheduled departure. The most recent `test_days` are the test split, the
`validation_days` before them validation, the rest train — never shuffled across time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from include.contract.features import (
    ALL_FEAST_FEATURES,
    EVENT_TIMESTAMP,
    FEATURE_SERVICE,
    LABEL_KEY,
    MODEL_FEATURES,
    SCHEDULE_CATEGORICAL,
    SCHEDULE_NUMERIC,
)
from include.core import lake
from include.core.errors import PermanentError

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

    from include.core.config import Settings

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Columns kept beside the features: identity and slicing, never model inputs.
CONTEXT_COLUMNS = ["flight_date", "flight", "route", EVENT_TIMESTAMP]


class DatasetError(PermanentError):
    """The window has too little data to train on; the message says what is missing.

    Deterministic for the data at hand, so the task fails at once instead of retrying."""


@dataclass(frozen=True)
class Window:
    end: dt.date
    train_days: int
    validation_days: int
    test_days: int

    @property
    def start(self) -> dt.date:
        return self.end - dt.timedelta(days=self.train_days + self.validation_days + self.test_days - 1)

    def split_of(self, day: dt.date) -> str:
        """Which split a day belongs to: contiguous, in time order."""
        test_start = self.end - dt.timedelta(days=self.test_days - 1)
        validation_start = test_start - dt.timedelta(days=self.validation_days)
        if day >= test_start:
            return "test"
        return "validation" if day >= validation_start else "train"

    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=n) for n in range((self.end - self.start).days + 1)]


def entity_frame(root: ObjectStoragePath, window: Window) -> pd.DataFrame:
    """Labelled flights of the window, with entity keys and schedule-time columns only."""
    return labelled_flights(root, window.days())


def labelled_flights(root: ObjectStoragePath, days: list[dt.date]) -> pd.DataFrame:
    """The days' flights with a known label, with entity keys and schedule-time columns only."""
    frame = lake.read_partitions(root, "clean", "flights", days)
    if frame is None:
        raise DatasetError(f"no clean flights between {min(days)} and {max(days)}; ingest that range first")
    frame = frame[frame[LABEL_KEY].notna()]
    keep = list(dict.fromkeys([*SCHEDULE_CATEGORICAL, *SCHEDULE_NUMERIC, *CONTEXT_COLUMNS, LABEL_KEY]))
    frame = frame[keep].copy()
    frame[LABEL_KEY] = frame[LABEL_KEY].astype("int8")
    frame["tailnum"] = frame["tailnum"].fillna("")
    return frame.sort_values([EVENT_TIMESTAMP, "carrier", "flight"], kind="stable").reset_index(drop=True)


def join_features(settings: Settings, entities: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Point-in-time join through the FeatureService; returns the frame and the registry version."""
    from include.core.feast import open_store

    store = open_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    joined = store.get_historical_features(entity_df=entities, features=service).to_df()
    joined = joined.sort_values([EVENT_TIMESTAMP, "carrier", "flight"], kind="stable").reset_index(drop=True)
    stamps = [service.last_updated_timestamp] + [
        store.get_feature_view(p.name).last_updated_timestamp for p in service.feature_view_projections
    ]
    version = max(s for s in stamps if s is not None).isoformat()
    return joined, f"{FEATURE_SERVICE}@{version}"


def split_frame(frame: pd.DataFrame, window: Window) -> dict[str, pd.DataFrame]:
    split = frame["flight_date"].map(window.split_of)
    columns = [*MODEL_FEATURES, LABEL_KEY, *[c for c in CONTEXT_COLUMNS if c not in MODEL_FEATURES]]
    return {name: frame.loc[split == name, columns].reset_index(drop=True) for name in SPLITS}


def describe_days(days: list[dt.date], limit: int = 12) -> str:
    """Days as runs of consecutive dates: `2013-09-25…2013-10-07, 2013-10-09`."""
    runs: list[list[dt.date]] = []
    for day in sorted(days):
        if runs and (day - runs[-1][-1]).days == 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    shown = [r[0].isoformat() if len(r) == 1 else f"{r[0].isoformat()}…{r[-1].isoformat()}" for r in runs]
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more runs of days" if len(shown) > limit else "")


def published_days_of(window: Window, published: dict[dt.date, str], max_missing_share: float) -> list[dt.date]:
    """The window's days with published features; refuses a window missing more than the allowed share."""
    days = window.days()
    missing = [d for d in days if d not in published]
    if len(missing) > max_missing_share * len(days):
        raise DatasetError(
            f"{len(missing)} of the {len(days)} days of {window.start}…{window.end} have no published features "
            f"(never ingested, or rejected by validation): {describe_days(missing)}; at most "
            f"{max_missing_share:.0%} may be missing (NIGHTSHIFT_MAX_MISSING_DAY_SHARE). Ingest or fix those days, "
            "or choose another end_date"
        )
    if missing:
        log.warning("training set: %d day(s) without published features left out: %s", len(missing),
                    describe_days(missing))  # fmt: skip
    return [d for d in days if d in published]


def build_training_set(settings: Settings, window: Window, run_id: str,
                       published: dict[dt.date, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write `{lake}/datasets/<run>/{train,validation,test}.parquet` and a manifest; return it.

    `published` maps each day whose latest validation passed to that validation's run: only those
    days are read (None: every day of the window, unchecked), and the manifest lists them."""
    root = lake.lake_root(settings)
    days = window.days() if published is None else published_days_of(window, published, settings.max_missing_day_share)
    entities = labelled_flights(root, days)
    joined, registry_version = join_features(settings, entities)
    missing = [f for f in ALL_FEAST_FEATURES if f not in joined.columns]
    if missing:
        raise DatasetError(f"Feast returned no {missing}; run `bin/nightshift prepare` (feast apply)")
    splits = split_frame(joined, window)
    empty = [name for name, part in splits.items() if part.empty]
    if empty:
        raise DatasetError(f"splits {empty} are empty for {window.start}…{window.end}; widen the window")
    folder = root / "datasets" / lake.safe_name(run_id)
    digest = hashlib.sha256()
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "window": {k: str(v) for k, v in asdict(window).items()} | {"start": str(window.start)},
        "features": MODEL_FEATURES,
        "label": LABEL_KEY,
        "feature_service": FEATURE_SERVICE,
        "feast_registry_version": registry_version,
        # Every day read, with the validation run that passed it; the days left out (not published).
        "days": {d.isoformat(): (published or {}).get(d) for d in days},
        "excluded_days": [d.isoformat() for d in window.days() if d not in days],
        "splits": {},
    }
    for name, part in splits.items():
        payload = lake.parquet_bytes(part)
        digest.update(payload)
        path = folder / f"{name}.parquet"
        lake.write_atomic(path, payload)
        manifest["splits"][name] = {
            "uri": lake.uri(path),
            "rows": len(part),
            "positive_rate": round(float(part[LABEL_KEY].mean()), 6),
            "first_day": str(part["flight_date"].min()),
            "last_day": str(part["flight_date"].max()),
        }
    manifest["content_sha256"] = digest.hexdigest()
    manifest["uri"] = lake.uri(folder)
    lake.write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2).encode())
    log.info("training set %s: %s", manifest["uri"], {k: v["rows"] for k, v in manifest["splits"].items()})
    return manifest
