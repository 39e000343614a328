"""`models.config` read and written through tensorflow-serving-api's protobufs, never templates,
and the other files TF Serving reads from a version folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from include.core.config import ConfigError, env_overrides

# Inside a version folder: PredictionLog TFRecords TF Serving replays when it loads the version.
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


@dataclass(frozen=True)
class ServingLimits:
    """What one local serving process admits; each field is `NIGHTSHIFT_SERVING_<NAME>` or its flag.

    A prediction is admitted while fewer than `max_in_flight + max_queued` are; it is computed once
    one of the `max_in_flight` slots frees. Beyond that it gets a 503 at once, as TF Serving answers
    UNAVAILABLE when its batching queue is full, and clients retry with backoff. Raw bodies held at
    once stay under `(max_in_flight + max_queued) * max_body_bytes`.
    """

    max_body_bytes: int = 10 * 1024 * 1024  # larger bodies: 413, refused before they are read
    max_in_flight: int = 8  # predictions computed at once
    max_queued: int = 32  # admitted predictions waiting for a slot
    body_timeout_s: float = 30.0  # an admitted request sends its whole body within this, or gets 408
    # TF Serving's flags of these names (0: TensorFlow picks, one thread per core). One thread each suits
    # these small models: a 1-row call took 1.3 ms against 2.0 ms with TensorFlow's pools, whose idle
    # threads spin on the cores the prediction service needs (README, "How fast").
    tensorflow_intra_op_parallelism: int = 1
    tensorflow_inter_op_parallelism: int = 1

    def __post_init__(self) -> None:
        least = {"max_body_bytes": 1, "max_in_flight": 1, "max_queued": 0, "body_timeout_s": 0.001,
                 "tensorflow_intra_op_parallelism": 0, "tensorflow_inter_op_parallelism": 0}  # fmt: skip
        for name, floor in least.items():
            value = getattr(self, name)
            if value < floor:
                raise ConfigError(f"NIGHTSHIFT_SERVING_{name.upper()}={value} is below {floor}; raise it")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingLimits:
        return cls(**env_overrides(cls(), "NIGHTSHIFT_SERVING_", env))


@dataclass
class ModelEntry:
    name: str
    base_path: str
    versions: list[int] = field(default_factory=list)  # empty = latest only, as TF Serving's default
    labels: dict[str, int] = field(default_factory=dict)


def write_models_config(path: Path, models: list[ModelEntry]) -> str:
    """Write the text-format ModelServerConfig atomically (rename), return its text."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = "tensorflow"
        if model.versions:
            entry.model_version_policy.specific.versions.extend(sorted(model.versions))
        for label, version in sorted(model.labels.items()):
            entry.version_labels[label] = version
    text = text_format.MessageToString(config)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.replace(path)
    return text


def read_models_config(path: Path) -> list[ModelEntry]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    return [
        ModelEntry(
            name=c.name,
            base_path=c.base_path,
            versions=list(c.model_version_policy.specific.versions),
            labels=dict(c.version_labels),
        )
        for c in config.model_config_list.config
    ]
