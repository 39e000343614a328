"""Failpoints: named places in a step where `bin/nightshift nights` may SIGKILL the task process, to
prove that a retry from exactly there converges (in the style of FoundationDB's and TiKV's failpoints).

Inert unless `NIGHTSHIFT_FAILPOINT_DIR` is set, which only the nights harness does. The harness arms
a failpoint by creating `<dir>/<name>.armed`. The first process to reach it takes the file (one shot:
a rename, so two processes cannot both take it), writes its pid to `<dir>/<name>.hit`, and waits
there for the harness's SIGKILL. If none comes within `HOLD_S`, it goes on, and the harness reports
the fault as not injected.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

HOLD_S = 120.0
FAILPOINT_DIR = "NIGHTSHIFT_FAILPOINT_DIR"

# Where each failpoint sits; the harness's faults name them.
PROMOTE_LABEL_MOVED = "promote.label_moved"  # deploy: `stable` moved, the registry and the record not yet


def failpoint(name: str) -> None:
    """Stop here for the harness when `name` is armed (module docstring); a no-op otherwise."""
    folder = os.environ.get(FAILPOINT_DIR)
    if not folder:
        return
    armed, taken = Path(folder) / f"{name}.armed", Path(folder) / f"{name}.taken.{os.getpid()}"
    try:
        armed.rename(taken)
    except FileNotFoundError:
        return
    (Path(folder) / f"{name}.hit").write_text(str(os.getpid()))
    log.warning("failpoint %s: pid %d waits up to %.0f s for the nights harness to kill it", name, os.getpid(),
                HOLD_S)  # fmt: skip
    time.sleep(HOLD_S)
    log.warning("failpoint %s: not killed; going on", name)
