"""A version's SavedModel before it serves: real rows to replay, the offline predictions and signature
it must match on the server, the warmup records TF Serving replays when it loads it, and the check that
its files are the ones the gate blessed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.contract.features import MODEL_FEATURES, SCHEDULE_CATEGORICAL
from include.contract.inputs import rows_to_arrays, serving_rows
from include.core import lake
from include.core.config import Settings
from include.deploy.errors import ArtifactMismatch, DeployError
from include.serving.config import WARMUP_FILE

# Serving's own additions to a version folder, left out of the blessed fingerprint.
SERVING_ADDITIONS = (WARMUP_FILE,)
EXPECTED_DTYPES = {f: "DT_STRING" if f in SCHEDULE_CATEGORICAL else "DT_FLOAT" for f in MODEL_FEATURES}


def sample_rows(settings: Settings, dataset_uri: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` real rows of the most recent day of the version's test split, as TF Serving instances."""
    test = lake.read_parquet(lake.at(settings, dataset_uri.rstrip("/")) / "test.parquet")
    recent = test[test["flight_date"] == test["flight_date"].max()]
    picked = recent.sample(n=min(n, len(recent)), random_state=seed).sort_values("event_timestamp")
    return serving_rows(picked)


def check_loads(export_dir: Path) -> Any:
    """Load the SavedModel in-process and check its signature, without calling it; raise DeployError if broken.

    Loading restores variables but runs no serving function, so a model that crashes or hangs when
    called is caught by infra validation's sandbox, never here in the worker.
    """
    import tensorflow as tf

    missing = [p for p in ("saved_model.pb", "variables/variables.index") if not (export_dir / p).exists()]
    if missing:
        raise DeployError(f"incomplete SavedModel: {', '.join(missing)} missing under {export_dir}")
    try:
        signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    except Exception as err:
        raise DeployError(f"SavedModel does not load: {type(err).__name__}: {err}") from err
    specs = signature.structured_input_signature[1]
    got = {name: ("DT_STRING" if spec.dtype == tf.string else "DT_FLOAT") for name, spec in specs.items()}
    if got != EXPECTED_DTYPES:
        raise DeployError(f"serving signature differs from the feature list: {signature_diff(got)}")
    return signature


def offline_predictions(export_dir: Path, rows: list[dict[str, Any]]) -> list[float]:
    """Predict `rows` with the SavedModel in-process. Only for a version the sandbox has already run on them."""
    import tensorflow as tf

    signature = check_loads(export_dir)
    outputs = signature(**{k: tf.constant(v) for k, v in rows_to_arrays(rows).items()})
    return [float(p) for p in next(iter(outputs.values())).numpy().reshape(-1)]


def signature_diff(got: dict[str, str]) -> str:
    missing = sorted(set(EXPECTED_DTYPES) - set(got))
    extra = sorted(set(got) - set(EXPECTED_DTYPES))
    typed = sorted(f for f in set(got) & set(EXPECTED_DTYPES) if got[f] != EXPECTED_DTYPES[f])
    return f"missing {missing}, unexpected {extra}, wrong dtype {typed}"


def write_warmup(export_dir: Path, model: str, rows: list[dict[str, Any]], records: int) -> int:
    """`assets.extra/tf_serving_warmup_requests`: PredictionLog TFRecords TF Serving replays on load."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    target = export_dir / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    sizes = [1, *(2**i for i in range(1, records))][:records]  # batch sizes 1, 2, 4, … warm each shape
    with tf.io.TFRecordWriter(str(target)) as writer:
        for size in sizes:
            batch = (rows * (size // len(rows) + 1))[:size]
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
                name=model, signature_name="serving_default"))  # fmt: skip
            for name, values in rows_to_arrays(batch).items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(values.astype(bytes) if values.dtype == object
                                                                   else values))  # fmt: skip
            log_entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_entry.SerializeToString())
    return len(sizes)


def require_blessed_bytes(export_dir: Any, version: int, recorded: str | None, served: bool = False) -> str:
    """The export's fingerprint, if it is the one the gate recorded; else ArtifactMismatch (nothing is served).

    `served`: a version folder in serving, where push added its warmup records (left out of the hash).
    """
    from include.train.gate import saved_model_sha256

    if not recorded:
        raise ArtifactMismatch(f"model version {version} has no recorded SavedModel hash (registered before the "
                               "gate fingerprinted models); retrain it: unhashed files are not served")  # fmt: skip
    found = saved_model_sha256(export_dir, exclude=SERVING_ADDITIONS if served else ())
    if found != recorded:
        raise ArtifactMismatch(f"model version {version}'s files at {export_dir} are not the ones the gate blessed "
                               f"(sha256 {found[:12]}… ≠ recorded {recorded[:12]}…); refusing to serve them: restore "
                               "the artifact or retrain")  # fmt: skip
    return found
