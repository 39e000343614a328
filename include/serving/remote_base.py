"""A model base path on an object store (`s3://bucket/serving/<model>`), as the local server reads it.

TF Serving reads `s3://` base paths natively (its S3 filesystem, with the `AWS_*` environment); the local
server reads them through fsspec, with the same environment (`include/core/lake.py`,
`credentials_env`). As TF Serving does, it polls the store rather than asking it on every request:
a base path's listing is at most `POLL_S` old. A version counts as present once its `saved_model.pb`
is, which the deploy uploads last (`include/deploy/published.py`), and a loaded version is a local copy
under the system's temporary folder, one folder per version and upload.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger("nightshift.serving")
POLL_S = 1.0  # TF Serving's --file_system_poll_wait_seconds default
SAVED_MODEL = "saved_model.pb"


def is_remote(base_path: str) -> bool:
    """A base path on an object store (`scheme://…`), not a folder of this machine."""
    return "://" in base_path and not base_path.startswith("file://")


class RemoteBases:
    """The version folders of remote base paths: listings cached for `POLL_S`, copies made on load."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "nightshift-serving-cache"
        self._listings: dict[str, tuple[float, dict[int, float]]] = {}
        self._lock = threading.Lock()

    def versions(self, base_path: str) -> dict[int, float]:
        """Numeric version folder → its `saved_model.pb`'s modification time (0.0 while it is missing)."""
        now = time.monotonic()
        with self._lock:
            cached = self._listings.get(base_path)
        if cached and now - cached[0] < POLL_S:
            return cached[1]
        try:
            listing = self._list(base_path)
        except Exception as err:  # the store is unreachable: keep what was loaded, as TF Serving does
            log.warning("could not list %s, keeping its last listing: %s: %s", base_path, type(err).__name__, err)
            listing = cached[1] if cached else {}
        with self._lock:
            self._listings[base_path] = (now, listing)
        return listing

    @staticmethod
    def _list(base_path: str) -> dict[int, float]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(base_path)
        fs.invalidate_cache()
        try:
            names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=True)
                     if e["type"] == "directory"]  # fmt: skip
        except FileNotFoundError:
            return {}
        listing = {}
        for name in names:
            if name.isdigit():
                try:
                    listing[int(name)] = fs.modified(f"{root}/{name}/{SAVED_MODEL}").timestamp()
                except FileNotFoundError:
                    listing[int(name)] = 0.0
        return listing

    def fingerprint(self, base_path: str) -> tuple:
        return tuple(sorted((str(v), stamp > 0) for v, stamp in self.versions(base_path).items()))

    def local_copy(self, base_path: str, version: int, stamp: float) -> Path:
        """The version's files in a local folder, fetched once per upload (`stamp`); where the fetch fails,
        a folder without `saved_model.pb`, which the loader reports as it would a missing export."""
        import fsspec

        key = hashlib.sha256(base_path.encode()).hexdigest()[:16]
        target = self.cache_dir / key / f"{version}-{stamp:.6f}"
        if (target / SAVED_MODEL).exists():
            return target
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        fs, root = fsspec.core.url_to_fs(base_path)
        try:
            fs.get(f"{root}/{version}/", str(staging) + "/", recursive=True)
            staging.rename(target)
        except OSError:  # the fetch failed, or another server (a replica here) renamed its copy first
            shutil.rmtree(staging, ignore_errors=True)
        for older in target.parent.glob(f"{version}-*"):  # earlier uploads of this version: loaded, or never
            if older != target:
                shutil.rmtree(older, ignore_errors=True)
        return target
