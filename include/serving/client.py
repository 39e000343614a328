"""The pipeline's only way to talk to serving: TF Serving's REST API, real or local alike."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from include.core.config import Settings

log = logging.getLogger(__name__)
JSON_HEADERS = {"Content-Type": "application/json"}


class ServingError(RuntimeError):
    """The server answered with an error (its `{"error": …}` message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def resolve_replicas(urls: Sequence[str]) -> list[str]:
    """The URLs, with each `dns:http://name:port` replaced by one URL per address `name` resolves to now: a
    Kubernetes headless Service's name gives its pods (`docker/k8s/tf-serving.yaml`), so a deploy reaches
    the replicas the autoscaler runs at that moment."""
    resolved: list[str] = []
    for url in urls:
        if not url.startswith("dns:"):
            resolved.append(url)
            continue
        parts = urlsplit(url.removeprefix("dns:"))
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except OSError as err:
            raise ServingError(f"serving replicas {url}: {parts.hostname} does not resolve ({err})") from err
        for address in sorted({info[4][0] for info in infos}):
            host = f"[{address}]" if ":" in address else address
            resolved.append(f"{parts.scheme}://{host}:{port}")
    return resolved


class ServingClient:
    """Model status, metadata and predictions for one model, with retries and backoff.

    Retries connection failures and 5xx answers (`retries` times, doubling `backoff` seconds);
    a 4xx answer is the request's fault and is raised at once with the server's message.

    Given several replicas' URLs, each call goes to the next replica in turn, and each retry to
    the one after, so a replica that is down costs a retry, not an answer. A deploy that must
    reach every replica asks each one through `replicas()`.
    """

    def __init__(self, base_url: str | Sequence[str], model: str, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.5, _http: httpx.Client | None = None):  # fmt: skip
        urls = resolve_replicas([base_url] if isinstance(base_url, str) else base_url)
        if not urls:
            raise ValueError("no serving URL given")
        self.base_urls = [url.rstrip("/") for url in urls]
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._owns_http = _http is None
        self._http = _http or httpx.Client(timeout=timeout)
        self._turn = itertools.count()

    @property
    def base_url(self) -> str:
        """The first replica's URL (the only one, unless several were given)."""
        return self.base_urls[0]

    def replicas(self) -> list[ServingClient]:
        """One client per replica, sharing this one's connections (closing them is this client's job)."""
        if len(self.base_urls) == 1:
            return [self]
        return [ServingClient(url, self.model, self.timeout, self.retries, self.backoff, _http=self._http)
                for url in self.base_urls]  # fmt: skip

    def _path(self, version: int | None, label: str | None) -> str:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        path = f"/v1/models/{self.model}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{label}"
        return path

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        delay = self.backoff
        # TF Serving's JSON takes NaN literals (missing numbers); httpx's json= refuses them.
        content = None if payload is None else json.dumps(payload, allow_nan=True).encode()
        first = next(self._turn)
        for attempt in range(self.retries + 1):
            url = self.base_urls[(first + attempt) % len(self.base_urls)] + path
            try:
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
            if len(self.base_urls) > 1 and (attempt + 1) % len(self.base_urls):
                log.warning("serving: %s; trying the next replica", problem)  # another replica may answer now
                continue
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
        if self._owns_http:
            self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_for(settings: Settings, retries: int = 3) -> ServingClient:
    """A client for the configured replicas and model; use it in a `with` block so its connections close."""
    return ServingClient(settings.replica_urls, settings.model_name, retries=retries)
