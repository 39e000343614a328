"""A pushed version on a remote serving base path (`NIGHTSHIFT_SERVING_MODEL_BASE_PATH=s3://…`).

The deploy still stages, checks and keeps each version under `settings.model_dir` (the sandbox and the
in-process check load it from there); the servers read the base path in `models.config`. Where that is
on an object store, the version is uploaded there too, through the lake's Airflow connection, with
`saved_model.pb` last: TF Serving, and the local server (`include/serving/remote_base.py`), count a
version folder only once it has one, so neither loads half an upload. An object store has no folder
rename to make this atomic; uploading the same blessed bytes again after a failure is harmless.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from include.core import lake
from include.serving.remote_base import SAVED_MODEL, is_remote

if TYPE_CHECKING:
    from include.core.config import Settings


def remote_version(settings: Settings, version: int) -> str | None:
    """`{base}/{version}` where the base path is remote, else None."""
    base = settings.serving_model_base
    return f"{base.rstrip('/')}/{version}" if is_remote(base) else None


def publish(settings: Settings, local: Path, version: int) -> str | None:
    """Upload the local version folder to the remote base path (unless it is complete there); its URI."""
    where = remote_version(settings, version)
    if where is None:
        return None
    target = lake.at(settings, where)
    if (target / SAVED_MODEL).exists():
        return where
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == SAVED_MODEL, str(p)))
    for path in files:
        destination = target / str(path.relative_to(local))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(path.read_bytes())
    return where


def local_version(settings: Settings, version: int) -> Path:
    """`settings.model_dir/<version>`, fetched from the remote base path when this machine lacks it (a
    Celery worker other than the one that pushed): the sandbox and the in-process check load it."""
    target = settings.model_dir / str(version)
    where = remote_version(settings, version)
    if (target / SAVED_MODEL).exists() or where is None or not (lake.at(settings, where) / SAVED_MODEL).exists():
        return target
    stage = settings.model_dir / f".fetch-{version}-{uuid.uuid4().hex[:8]}"  # not numeric: servers skip it
    try:
        lake.copy_tree(lake.at(settings, where), stage)
        stage.rename(target)
    except OSError:  # another task on this machine fetched it first
        if not (target / SAVED_MODEL).exists():
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target
