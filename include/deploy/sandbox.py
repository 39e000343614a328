"""Infra validation's first half, after TFX's InfraValidator: the candidate is loaded and queried in a
throwaway server of its own (`include.serving.process.sandbox_server`), never first in production's.

A candidate that crashes that server, hangs it past its hard timeout, fails to load, serves another
signature or errors on real rows is rejected here; production's server has not seen it yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from include.core.config import DeployPolicy, Settings
from include.deploy.errors import SandboxRejected
from include.deploy.savedmodel import EXPECTED_DTYPES, signature_diff
from include.serving.client import ServingClient, ServingError

T = TypeVar("T")
# One request to the sandbox; a slower answer is asked again until the sandbox's hard timeout.
REQUEST_TIMEOUT_S = 5.0


def _reject(box: Any, what: str, problem: str) -> SandboxRejected:
    err = SandboxRejected(f"version {box.version} in the infra validation sandbox: {what}: {problem}")
    err.log_tail = box.log_tail()  # type: ignore[attr-defined]
    return err


def _ask(box: Any, what: str, call: Callable[[], T]) -> T:
    """`call()` against the sandbox, asked again while it is busy (loading), until it answers, dies or times out."""
    while True:
        try:
            return call()
        except ServingError as err:
            if err.status is not None:  # the sandbox answered: with an error about the model
                raise _reject(box, what, f"HTTP {err.status}: {err}") from err
            if (ended := box.exited()) is not None:
                crashed = f"the candidate took the sandbox server down ({ended})"
                problem = ended if box.killed_by_watchdog.is_set() else crashed
                raise _reject(box, what, problem) from err
            if box.remaining() <= 0:
                raise _reject(box, what, f"hung: no answer within the {box.timeout_s:.0f} s hard timeout") from err
        time.sleep(0.2)


def _wait_available(box: Any, client: ServingClient) -> None:
    while True:
        states = _ask(box, "load", lambda: client.status(version=box.version))
        if any(s["state"] == "AVAILABLE" for s in states):
            return
        errors = [s["status"].get("error_message") for s in states if s["state"] == "END"]
        if any(errors):
            raise _reject(box, "load", f"failed to load: {errors[0]}")
        if box.remaining() <= 0:
            raise _reject(box, "load", f"not AVAILABLE within the sandbox's {box.timeout_s:.0f} s hard timeout")
        time.sleep(0.3)


def validate_in_sandbox(settings: Settings, policy: DeployPolicy, version: int, rows: list[dict[str, Any]]) -> dict:
    """Load `version` alone in a sandbox server, check it is AVAILABLE, its signature, and that it answers `rows`.

    Returns the checks and the served predictions; raises SandboxRejected (the model's fault) or
    SandboxUnavailable (the sandbox did not start: the worker's fault, the version is not judged).
    """
    from include.serving.process import sandbox_server

    started = time.monotonic()
    with sandbox_server(settings, version, policy.sandbox_timeout_s) as box:
        box.load()
        with ServingClient(box.url, settings.model_name, timeout=REQUEST_TIMEOUT_S, retries=0) as client:
            _wait_available(box, client)
            signature = _ask(box, "metadata", lambda: client.signature_inputs(version=version))
            if signature != EXPECTED_DTYPES:
                raise _reject(box, "metadata", f"the served signature differs: {signature_diff(signature)}")
            served = _ask(box, f"predict {len(rows)} real rows", lambda: client.predict_rows(rows, version=version))
    seconds = round(time.monotonic() - started, 1)
    return {"available": True, "signature": True, "requests": len(rows), "seconds": seconds,
            "predictions": [float(p) for p in _flat(served)]}  # fmt: skip


def _flat(values: Any) -> list[Any]:
    if isinstance(values, list):
        return [v for item in values for v in _flat(item)]
    return [values]
