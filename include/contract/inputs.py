"""The model's inputs from a frame, in the three shapes callers need, without importing TensorFlow.

Training and in-process prediction take numpy arrays; TF Serving's REST API takes JSON columns
(`inputs`) or rows (`instances`). One conversion serves all, so the served and the offline model
see the same values (categoricals as strings, missing ones as ""; numbers as float32, NaN kept).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from include.contract.features import MODEL_FEATURES, SCHEDULE_CATEGORICAL

CATEGORICAL = SCHEDULE_CATEGORICAL
NUMERIC = [f for f in MODEL_FEATURES if f not in CATEGORICAL]


def to_model_inputs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw columns → the arrays the model (and the serving signature) take."""
    arrays = {c: frame[c].fillna("").astype(str).to_numpy(dtype=object) for c in CATEGORICAL}
    arrays |= {n: frame[n].astype("float32").to_numpy(dtype=np.float32) for n in NUMERIC}
    return arrays


def serving_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """The same values as JSON-ready columns (TF Serving's columnar `inputs`)."""
    arrays = to_model_inputs(frame)
    return {f: arrays[f].tolist() if f in CATEGORICAL else [float(v) for v in arrays[f]] for f in MODEL_FEATURES}


def serving_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The same values as JSON-ready rows (TF Serving's row `instances`)."""
    columns = serving_columns(frame)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def rows_to_arrays(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Instances back to the arrays an in-process SavedModel call takes."""
    return {f: np.array([r[f] for r in rows], dtype=object if f in CATEGORICAL else np.float32) for f in MODEL_FEATURES}


def _serving_value(feature: str, value: Any) -> Any:
    if feature in CATEGORICAL:
        return "" if value is None or (isinstance(value, float) and value != value) else str(value)
    return float(np.float32(np.nan if value is None else value))


def records_to_columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """`serving_columns` of records without a frame (the prediction service's hot path): the same values,
    categoricals as strings with missing ones as "", numbers rounded to float32 with NaN kept."""
    return {f: [_serving_value(f, record.get(f)) for record in records] for f in MODEL_FEATURES}


def records_to_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`serving_rows` of records without a frame: `records_to_columns`, row by row."""
    columns = records_to_columns(records)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
