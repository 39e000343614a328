"""The pipeline's only way to talk to serving: TF Serving's REST API, real or local alike."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from include.core.config import Settings

log = logging.getLogger(__name__)
JSON_HEADERS = {"Content-Type": "application/json"}


class ServingError(RuntimeError):
    """The server answered with an error (its `{"error": …}` message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServingClient:
    """Model status, metadata and predictions for one model, with retries and backoff.

    Retries connection failures and 5xx answers (`retries` times, doubling `backoff` seconds);
    a 4xx answer is the request's fault and is raised at once with the server's message.
    """

    def __init__(self, base_url: str, model: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(timeout=timeout)

    def _path(self, version: int | None, label: str | None) -> str:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        path = f"{self.base_url}/v1/models/{self.model}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{label}"
        return path

    def _call(self, method: str, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                # TF Serving's JSON takes NaN literals (missing numbers); httpx's json= refuses them.
                content = None if payload is None else json.dumps(payload, allow_nan=True).encode()
                response = self._http.request(method, url, content=content, headers=JSON_HEADERS)
            except httpx.TransportError as err:
                problem, status = f"{url} unreachable: {err}", None
            else:
                if response.status_code < 400:
                    return response.json()
                try:
                    problem = response.json().get("error", response.text)
                except ValueError:
                    problem = response.text
                status = response.status_code
                if status < 500:
                    raise ServingError(problem, status)
            if attempt == self.retries:
                raise ServingError(f"{problem} (after {self.retries + 1} attempts)", status)
            log.warning("serving: %s; retrying in %.1f s", problem, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def status(self, version: int | None = None, label: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", self._path(version, label))["model_version_status"]

    def metadata(self, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        return self._call("GET", self._path(version, label) + "/metadata")

    def signature_inputs(self, version: int | None = None, label: str | None = None) -> dict[str, str]:
        """Input name → dtype of `serving_default`."""
        signature = self.metadata(version, label)["metadata"]["signature_def"]["signature_def"]["serving_default"]
        return {name: spec["dtype"] for name, spec in signature["inputs"].items()}

    def predict_rows(self, rows: list[dict[str, Any]], version: int | None = None, label: str | None = None) -> list:
        return self._call("POST", self._path(version, label) + ":predict", {"instances": rows})["predictions"]

    def predict_columns(
        self, columns: dict[str, list[Any]], version: int | None = None, label: str | None = None
    ) -> list:
        return self._call("POST", self._path(version, label) + ":predict", {"inputs": columns})["outputs"]

    def close(self) -> None:
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_for(settings: Settings, retries: int = 3) -> ServingClient:
    """A client for the configured server and model; use it in a `with` block so its connections close."""
    return ServingClient(settings.serving_url, settings.model_name, retries=retries)
