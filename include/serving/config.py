"""`models.config` read and written through tensorflow-serving-api's protobufs, never templates,
and the other files TF Serving reads from a version folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Inside a version folder: PredictionLog TFRecords TF Serving replays when it loads the version.
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


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
