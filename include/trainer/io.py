"""The trainer's I/O: datasets and model folders through fsspec (`file://` and `s3://` alike, no Airflow
in the image), and the seeding that makes a run repeatable."""

from __future__ import annotations

from pathlib import Path


def _fs_and_path(uri: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def read_split(dataset_uri: str, split: str):
    import pandas as pd

    fs, root = _fs_and_path(dataset_uri)
    with fs.open(f"{root}/{split}.parquet", "rb") as handle:
        return pd.read_parquet(handle)


def upload_dir(local: Path, uri: str) -> None:
    """Copy a local folder to `uri` (a no-op move for local paths)."""
    fs, path = _fs_and_path(uri)
    fs.makedirs(path, exist_ok=True)
    fs.put(str(local) + "/", path, recursive=True)


def download_dir(uri: str, local: Path) -> Path:
    fs, path = _fs_and_path(uri)
    fs.get(path.rstrip("/") + "/", str(local), recursive=True)
    return local


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
