"""The lake: an `ObjectStoragePath` root (`file://` by default, `s3://` with an Airflow connection).

Every partition is ONE Parquet file. On disk it is written to a hidden temporary name beside it and
then renamed into place; on S3 it is one PUT. Both are atomic, so a reader sees the old partition or
the new one, never half of either; readers skip names starting with `.` or `_`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

if TYPE_CHECKING:
    import pandas as pd

    from include.core.config import Settings

PARTITION_FILE = "part-0.parquet"


def lake_root(settings: Settings) -> ObjectStoragePath:
    """The lake root, bound to the configured Airflow connection for remote stores."""
    return at(settings, settings.lake_uri + "/")


def at(settings: Settings, location: str) -> ObjectStoragePath:
    """A recorded `file://` or `s3://` URI as a path, bound to the lake's connection for remote stores."""
    if settings.lake_conn_id and not location.startswith("file://"):
        return ObjectStoragePath(location, conn_id=settings.lake_conn_id)
    return ObjectStoragePath(location)


def uri(path: ObjectStoragePath | Path) -> str:
    """`file:///…` or `s3://bucket/key`: where the object is, without the connection id."""
    if isinstance(path, Path):
        return path.resolve().as_uri()
    return f"{path.protocol}://{'/' if path.protocol == 'file' else ''}{path.path.lstrip('/')}"


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def safe_name(text: str) -> str:
    """A run id (or version) as ONE path segment, different for every different id.

    ASCII letters, digits, `-`, `_` and `.` stay; every other byte of the UTF-8 text, `~` included,
    becomes `~XX` (`manual__2026-…T21:25+00:00` → `manual__2026-…T21~3A25~2B00~3A00`). So `a:b` and
    `a+b` never share a folder, no segment has a `/`, and none starts with `.` (a leading dot is
    escaped too): a name can neither hide nor climb out of its parent.
    """
    if not text:
        raise ValueError("an empty name has no folder")
    out = []
    for index, byte in enumerate(text.encode()):
        char = chr(byte)
        out.append(char if char in _PLAIN and not (index == 0 and char == ".") else f"~{byte:02X}")
    return "".join(out)


def partition_dir(root: ObjectStoragePath, zone: str, dataset: str, day: dt.date) -> ObjectStoragePath:
    """`{root}/{zone}/{dataset}/date=YYYY-MM-DD/`."""
    return root / zone / dataset / f"date={day.isoformat()}"


def partition_file(root: ObjectStoragePath, zone: str, dataset: str, day: dt.date) -> ObjectStoragePath:
    return partition_dir(root, zone, dataset, day) / PARTITION_FILE


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet encoding: same frame, same bytes (no index, no timestamps)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def write_atomic(path: ObjectStoragePath, payload: bytes) -> str:
    """Write `payload` to `path` atomically, replacing what was there; returns its SHA-256.

    On an object store one PUT already is atomic (readers get the old object or the new one), so the
    object is written in place: staging would add a copy, a delete and their listings per file. On disk
    it is staged and renamed."""
    if path.protocol not in ("file", "local", ""):
        path.write_bytes(payload)
        return hashlib.sha256(payload).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    staging.write_bytes(payload)
    try:
        staging.fs.mv(staging.path, path.path)
    finally:
        if staging.exists():
            staging.unlink()
    return hashlib.sha256(payload).hexdigest()


def write_parquet(path: ObjectStoragePath, frame: pd.DataFrame) -> str:
    return write_atomic(path, parquet_bytes(frame))


def relative(path: Any, root: Any) -> str:
    """`path` under `root` as a `/`-separated relative name, for local Paths and lake paths alike
    (an `s3://` path's `relative_to` gives a path that cannot even be printed)."""
    if isinstance(path, Path):
        return path.relative_to(root).as_posix()
    prefix = root.path.rstrip("/") + "/"
    if not path.path.startswith(prefix):
        raise ValueError(f"{uri(path)} is not under {uri(root)}")
    return path.path[len(prefix) :]


def copy_tree(source: Any, target: ObjectStoragePath | Path) -> dict[str, str]:
    """Copy every file under `source` to `target` (each a local Path or an ObjectStoragePath).

    Returns relative path → URI of the copy.
    """
    copied = {}
    for path in sorted(source.rglob("*"), key=str):
        if path.is_file():
            name = relative(path, source)
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())
            copied[name] = uri(destination)
    return copied


def read_parquet(path: ObjectStoragePath, columns: list[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(path.read_bytes()), columns=columns)


def read_partitions(root: ObjectStoragePath, zone: str, dataset: str, days: list[dt.date]) -> pd.DataFrame | None:
    """Concatenate the existing partitions among `days`; None if there are none."""
    import pandas as pd

    frames = [read_parquet(f) for d in days if (f := partition_file(root, zone, dataset, d)).exists()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def credentials_env(settings: Settings) -> dict[str, str]:
    """The lake's Airflow connection as the AWS SDK's environment variables, for a process without Airflow
    (the local backend's trainer, which reads the lake through fsspec as the pod does with the
    `nightshift-lake` Secret). Empty for a `file://` lake or without a connection: the SDK's own
    chain (instance role, `~/.aws`) applies then."""
    if not settings.lake_uri.startswith("s3://") or not settings.lake_conn_id:
        return {}
    from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

    hook = AwsGenericHook(aws_conn_id=settings.lake_conn_id, client_type="s3")
    credentials = hook.get_credentials()
    env = {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key}
    if credentials.token:
        env["AWS_SESSION_TOKEN"] = credentials.token
    if hook.conn_config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = hook.conn_config.endpoint_url
    if hook.conn_config.region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_config.region_name
    return env
