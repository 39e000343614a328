"""A local server that implements TensorFlow Serving's REST API on the same base path and config.

TF Serving has no PyPI or Debian package, so the embedded default runs this instead; production
runs the real `tensorflow/serving` image. Implemented (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature metadata
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict    "instances" (row) or "inputs" (columnar)

Errors come back as `{"error": "..."}` with TF Serving's HTTP codes; a path under `/v1/` that is not
one of these is a 400 "Malformed request", as TF Serving's route regexes make it. `models.config` and
the version directories are re-read when they change, as with `--model_config_file_poll_wait_seconds`;
a `models.config` that does not parse is logged and the last good one stays in force.

Limits (`ServingLimits`, from `NIGHTSHIFT_SERVING_*` or the flags): a body over `max_body_bytes` gets
413 before it is read (on its Content-Length, or as soon as a chunked body passes the cap); at most
`max_in_flight` predictions run at once and `max_queued` wait, beyond which a 503 comes back at once.

    python -m include.serving.local_server --model_config_file PATH [--rest_api_port 8501] [--port_file PATH]
        [--host 127.0.0.1] [--max_body_bytes N] [--max_in_flight N] [--max_queued N] [--body_timeout_s S]

`--rest_api_port 0` binds any free port; the port bound is printed and, with `--port_file`, written
there (atomically) before the first request is taken, so a caller never has to guess a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from include.core.config import ConfigError
from include.serving.config import WARMUP_FILE, ModelEntry, ServingLimits, read_models_config
from include.serving.remote_base import RemoteBases, is_remote

log = logging.getLogger("nightshift.serving")
# TF Serving's own route regexes (http_rest_api_util.cc), matched on the raw (still percent-encoded)
# path: a version is ASCII digits only, so `/versions/%C2%B2` or `/versions/x` is a malformed request.
V1_PATH = re.compile(r"(?i)/v1/.*")
POST_ROUTE = re.compile(
    r"(?i)/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>classify|regress|predict)"
)
GET_ROUTE = re.compile(
    r"(?i)/v1/models(?:/(?P<model>[^/:]+))?(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<verb>metadata))?"
)
INT64_MAX = 2**63 - 1
# Answers sent while part of the request body may be unread: the connection closes after them.
CLOSE_AFTER = {408, 413, 503}
DTYPE_NAMES = {"string": "DT_STRING", "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int64": "DT_INT64",
               "int32": "DT_INT32", "bool": "DT_BOOL"}  # fmt: skip


class ServingError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Route:
    model: str
    version: int | None
    label: str | None
    verb: str  # "status", "metadata", "predict", "classify" or "regress"


def version_number(raw: str) -> int:
    """A version from a path or request: ASCII digits within int64, as TF Serving's SimpleAtoi takes."""
    digits = raw.lstrip("0") or "0"  # length first: int() refuses strings of over 4300 digits
    if not (raw.isascii() and raw.isdigit()) or len(digits) > 19 or int(digits) > INT64_MAX:
        raise ServingError(400, f"Failed to convert version: {raw[:40]} to numeric.")
    return int(digits)


def parse_route(method: str, path: str) -> Route:
    """Route a raw `/v1/...` path as TF Serving does; anything else there is a 400."""
    regex = {"GET": GET_ROUTE, "POST": POST_ROUTE}.get(method)
    match = regex.fullmatch(path) if regex else None
    if match is None:
        raise ServingError(400, f"Malformed request: {method} {path}")
    if not match["model"]:
        raise ServingError(400, "Missing model name in request.")
    version = version_number(match["version"]) if match["version"] else None
    label = unquote(match["label"]) if match["label"] else None
    return Route(unquote(match["model"]), version, label, (match["verb"] or "status").lower())


@dataclass
class LoadedVersion:
    version: int
    path: Path
    state: str = "LOADING"
    error: str = ""
    signature: Any = None
    stamp: float = 0.0
    warmed_up: int = 0


@dataclass
class ServedModel:
    entry: ModelEntry
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # the labels in force (see `_labels`)


class ModelManager:
    """Loads what `models.config` asks for; reloads when the file or version folders change.

    Loading (a SavedModel and its warmup replay) takes seconds, so it runs outside `_lock`, which
    only guards reading and swapping `models`: predictions keep being answered from the state in
    force while a reload runs, as TF Serving keeps serving the old versions until the new ones load.
    """

    def __init__(self, config_file: Path, loader: Callable[[int, Path, float], LoadedVersion] | None = None) -> None:
        self.config_file = config_file
        self.models: dict[str, ServedModel] = {}
        self._loader = loader or load_version
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._seen: tuple = ()
        self._remote = RemoteBases()  # base paths on an object store (s3://…)

    def _fingerprint(self, base_paths: Iterable[str]) -> tuple:
        # The inode too: each atomic write is a new file, even within one tick of the (coarse) file clock.
        try:
            stat = self.config_file.stat()
            parts: list[Any] = [(stat.st_mtime_ns, stat.st_ino)]
        except FileNotFoundError:
            parts = [0]
        for base_path in base_paths:
            if is_remote(base_path):
                parts += self._remote.fingerprint(base_path)
            elif (base := Path(base_path)).exists():
                parts += sorted((p.name, (p / "saved_model.pb").exists()) for p in base.iterdir() if p.is_dir())
        return tuple(parts)

    def _current(self) -> tuple[dict[str, ServedModel], tuple]:
        with self._lock:
            return self.models, self._seen

    def refresh(self) -> None:
        models, seen = self._current()
        if seen and self._fingerprint(m.entry.base_path for m in models.values()) == seen:
            return
        # One loader at a time. Once a state is in force, the others answer from it rather than wait;
        # before the first load there is none, so they wait (TF Serving answers only once loaded).
        if not self._load_lock.acquire(blocking=not models):
            return
        try:
            from google.protobuf import text_format

            models, seen = self._current()  # what the previous loader left
            try:
                entries = read_models_config(self.config_file) if self.config_file.exists() else []
            except (text_format.ParseError, OSError, ValueError) as err:
                # TF Serving logs a config it cannot read and keeps serving the last good one.
                log.error("models.config %s not loaded, still serving the last good config: %s: %s",
                          self.config_file, type(err).__name__, err)  # fmt: skip
                with self._lock:  # not re-read until it changes again
                    self._seen = self._fingerprint(m.entry.base_path for m in models.values())
                return
            # Taken before loading: a change made while versions load is seen by the next refresh.
            fingerprint = self._fingerprint({e.name: e.base_path for e in entries}.values())
            if seen and fingerprint == seen:
                return
            fresh: dict[str, ServedModel] = {}
            for entry in entries:
                served = ServedModel(entry, {})
                previous = models.get(entry.name)
                for version in self._wanted(entry):
                    old = previous.versions.get(version) if previous else None
                    stamp = self._stamp(entry.base_path, version)
                    if old and old.state == "AVAILABLE" and old.stamp == stamp:
                        served.versions[version] = old
                    else:
                        served.versions[version] = self._loader(version, self._folder(entry, version, stamp), stamp)
                served.labels = self._labels(entry, served, previous)
                fresh[entry.name] = served
            with self._lock:
                self.models, self._seen = fresh, fingerprint
        finally:
            self._load_lock.release()

    @staticmethod
    def _labels(entry: ModelEntry, served: ServedModel, previous: ServedModel | None) -> dict[str, int]:
        """TF Serving only lets a label move to a version that was already AVAILABLE: load first,
        then label, in two config changes. A config breaking that keeps the old labels (as TF
        Serving keeps its old config when a reload fails). At start-up, loading comes first."""
        if previous is None:
            ready = {v for v, lv in served.versions.items() if lv.state == "AVAILABLE"}
        else:
            ready = {v for v, lv in previous.versions.items() if lv.state == "AVAILABLE"} & set(served.versions)
        unready = {label: v for label, v in entry.labels.items() if v not in ready}
        if not unready:
            return dict(entry.labels)
        log.error("models.config for %s rejected: label(s) %s point at versions not yet available; load them "
                  "first, then move the label", entry.name, unready)  # fmt: skip
        kept = previous.labels if previous is not None else {}
        return {label: v for label, v in kept.items() if v in served.versions}

    def _stamp(self, base_path: str, version: int) -> float:
        if is_remote(base_path):
            return self._remote.versions(base_path).get(version, 0.0)
        pb = Path(base_path) / str(version) / "saved_model.pb"
        return pb.stat().st_mtime if pb.exists() else 0.0

    def _folder(self, entry: ModelEntry, version: int, stamp: float) -> Path:
        """The version's folder on this machine: in the base path, or a copy of a remote one."""
        if is_remote(entry.base_path):
            return self._remote.local_copy(entry.base_path, version, stamp)
        return Path(entry.base_path) / str(version)

    def _wanted(self, entry: ModelEntry) -> list[int]:
        if entry.versions:
            return sorted(entry.versions)
        if is_remote(entry.base_path):
            return sorted(self._remote.versions(entry.base_path))[-1:]
        base = Path(entry.base_path)
        numeric = (
            sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) if base.exists() else []
        )
        return numeric[-1:]

    def resolve(self, model: str, version: str | int | None, label: str | None) -> tuple[ServedModel, LoadedVersion]:
        self.refresh()
        return self.lookup(model, version, label)

    def lookup(self, model: str, version: str | int | None, label: str | None) -> tuple[ServedModel, LoadedVersion]:
        """Resolve against the state in force, without looking for changes first."""
        served = self._current()[0].get(model)
        if served is None:
            raise ServingError(404, f"Servable not found for request: Latest({model})")
        if label is not None:
            if label not in served.labels:
                raise ServingError(404, f"Unrecognized servable version label: {label}")
            number = served.labels[label]
        elif version is not None:
            number = version if isinstance(version, int) else version_number(version)
        else:
            available = [v for v, lv in served.versions.items() if lv.state == "AVAILABLE"]
            if not available:
                raise ServingError(404, f"Servable not found for request: Latest({model})")
            number = max(available)
        loaded = served.versions.get(number)
        if loaded is None:
            raise ServingError(404, f"Servable not found for request: Specific({model}, {number})")
        return served, loaded


def load_version(version: int, path: Path, stamp: float) -> LoadedVersion:
    """Load one version folder and replay its warmup records; a broken one ends in state END."""
    import tensorflow as tf

    loaded = LoadedVersion(version, path, stamp=stamp)
    if not (path / "saved_model.pb").exists():
        loaded.state, loaded.error = (
            "END",
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
        )
        return loaded
    try:
        loaded.signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        loaded.warmed_up = _warm_up(loaded.signature, path / WARMUP_FILE)
        loaded.state = "AVAILABLE"
    except Exception as err:  # a corrupt export (or failing warmup) must never be served
        loaded.state, loaded.error = "END", f"{type(err).__name__}: {err}"
    return loaded


def _warm_up(signature: Any, records: Path) -> int:
    """Replay `assets.extra/tf_serving_warmup_requests` (PredictionLog TFRecords), as TF Serving does."""
    if not records.exists():
        return 0
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for raw in tf.data.TFRecordDataset(str(records)):
        entry = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in entry.predict_log.request.inputs.items()}
        signature(**inputs)
        count += 1
    return count


def _status(loaded: LoadedVersion) -> dict[str, Any]:
    ok = loaded.state == "AVAILABLE" or not loaded.error
    status = {"error_code": "OK" if ok else "UNKNOWN", "error_message": "" if ok else loaded.error}
    return {"version": str(loaded.version), "state": loaded.state, "status": status}


def _tensor_spec(spec: Any) -> dict[str, Any]:
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {
        "dtype": DTYPE_NAMES.get(spec.dtype.name, spec.dtype.name),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": f"serving_default_{spec.name}:0",
    }


def signature_metadata(loaded: LoadedVersion) -> dict[str, Any]:
    inputs = loaded.signature.structured_input_signature[1]
    outputs = loaded.signature.structured_outputs
    return {"signature_def": {
        "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
        "signature_def": {"serving_default": {
            "inputs": {name: _tensor_spec(spec) for name, spec in inputs.items()},
            "outputs": {name: _tensor_spec(spec) for name, spec in outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }},
    }}  # fmt: skip


def _as_tensor(name: str, values: list[Any], spec: Any):
    import tensorflow as tf

    try:
        if spec.dtype == tf.string:
            if any(not isinstance(v, str) for v in values):
                raise TypeError("expected strings")
            return tf.constant(values, dtype=tf.string)
        # JSON has no NaN: TF Serving takes the NaN/Infinity literals, and rejects null.
        if any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for v in values):
            raise TypeError(
                "expected numbers (NaN for missing), got "
                + json.dumps(next(v for v in values if isinstance(v, (str, bool)) or not isinstance(v, (int, float))))
            )
        return tf.constant(values, dtype=spec.dtype)
    except (TypeError, ValueError) as err:
        message = f"JSON Value for input '{name}' does not match the type {spec.dtype.name}: {err}"
        raise ServingError(400, f"Failed to process element: {name}. Error: Invalid argument: {message}") from err


def predict(loaded: LoadedVersion, body: dict[str, Any]) -> dict[str, Any]:
    signature_name = body.get("signature_name", "serving_default")
    if signature_name != "serving_default":
        raise ServingError(400, f'Serving signature name: "{signature_name}" not found in signature def')
    specs = loaded.signature.structured_input_signature[1]
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(400, "JSON Value: must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise ServingError(400, "JSON Value: 'instances' must be a non-empty list of objects with named inputs")
        columns = {name: [row.get(name) for row in rows] for name in specs}
        keys = set().union(*(row.keys() for row in rows))
    else:
        columns = body["inputs"]
        if not isinstance(columns, dict):
            raise ServingError(400, "JSON Value: 'inputs' must be an object of named input lists")
        keys = set(columns)
        columns = {k: v if isinstance(v, list) else [v] for k, v in columns.items()}
    extra, missing = sorted(keys - set(specs)), sorted(set(specs) - keys)
    if extra:
        raise ServingError(
            400, f"Failed to process input: unknown input '{extra[0]}'; the signature takes {sorted(specs)}"
        )
    if missing:
        raise ServingError(400, f"Failed to process input: missing input '{missing[0]}'")
    if "instances" in body:
        absent = [n for n in specs if any(n not in row for row in body["instances"])]
        if absent:
            raise ServingError(400, f"Failed to process element: missing input '{absent[0]}' in an instance")
    if len({len(v) for v in columns.values()}) != 1:
        raise ServingError(400, "Failed to process input: all inputs must have the same batch size")
    tensors = {name: _as_tensor(name, columns[name], spec) for name, spec in specs.items()}
    outputs = {k: v.numpy().tolist() for k, v in loaded.signature(**tensors).items()}
    single = next(iter(outputs.values())) if len(outputs) == 1 else None
    if "instances" in body:
        return {"predictions": single if single is not None else
                [{k: v[i] for k, v in outputs.items()} for i in range(len(body["instances"]))]}  # fmt: skip
    return {"outputs": single if single is not None else outputs}


def _predict_route(manager: ModelManager, route: Route, raw: bytes) -> Response:
    """Parse, resolve and predict in one worker thread; the answer is serialized once, here."""
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise ServingError(400, f"JSON Parse error: {err}") from err
    if not isinstance(body, dict):
        raise ServingError(400, "JSON Value: request body must be an object")
    _, loaded = manager.lookup(route.model, route.version, route.label)
    if loaded.state != "AVAILABLE":
        raise ServingError(503, f"Servable not available: {loaded.error or loaded.state}")
    return Response(json.dumps(predict(loaded, body)), media_type="application/json")


def _status_route(manager: ModelManager, route: Route) -> dict[str, Any]:
    served, loaded = manager.resolve(route.model, route.version, route.label)
    if route.verb == "metadata":
        if loaded.state != "AVAILABLE":
            raise ServingError(404, f"Servable not available: {loaded.error or loaded.state}")
        return {"model_spec": {"name": route.model, "signature_name": "", "version": str(loaded.version)},
                "metadata": signature_metadata(loaded)}  # fmt: skip
    if route.version is not None or route.label is not None:
        return {"model_version_status": [_status(loaded)]}
    return {"model_version_status": [_status(v) for v in sorted(served.versions.values(), key=lambda v: -v.version)]}


def _error_response(status: int, message: str) -> JSONResponse:
    headers = {"Connection": "close"} if status in CLOSE_AFTER else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """Refuses a body over `max_bytes` with 413 without reading it whole: on its Content-Length before
    any of it is read, and for a chunked body as soon as what has arrived passes the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> ServingError:
        return ServingError(413, f"Request body of {size} is over the limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                await _error_response(400, "Malformed request: Content-Length is not a number")(scope, receive, send)
                return
            if len(declared) > 19 or int(declared) > self.max_bytes:
                error = self._too_large(f"{declared.decode()} bytes")
                await _error_response(error.status, error.message)(scope, receive, send)
                return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"more than {received} bytes")  # answered by the app's handler
            return message

        await self.app(scope, capped_receive, send)


class PredictionGate:
    """Bounds predictions: `max_in_flight` computed at once, `max_queued` more waiting for a slot.

    One more is refused at once with 503, as TF Serving answers UNAVAILABLE when its batching queue is
    full; waiting without bound would only move the overload into memory and the clients' timeouts.
    Only the event loop thread touches `admitted`, so it needs no lock.
    """

    def __init__(self, max_in_flight: int, max_queued: int) -> None:
        self.max_in_flight, self.max_queued = max_in_flight, max_queued
        self.admitted = 0
        self._slots = asyncio.Semaphore(max_in_flight)

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.max_in_flight + self.max_queued:
            raise ServingError(503, f"Too many predict requests: {self.max_in_flight} running and {self.max_queued} "
                                    "queued; retry with backoff")  # fmt: skip
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            yield


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope["path"])


def create_app(config_file: Path, limits: ServingLimits | None = None) -> FastAPI:
    limits = limits or ServingLimits()
    manager = ModelManager(config_file)
    gate = PredictionGate(limits.max_in_flight, limits.max_queued)
    app = FastAPI(title="nightshift local TF Serving", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager, app.state.gate, app.state.limits = manager, gate, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, err: ServingError) -> JSONResponse:
        return _error_response(err.status, err.message)

    async def predict_request(route: Route, request: Request) -> Response:
        async with gate.admit():
            try:
                async with asyncio.timeout(limits.body_timeout_s):
                    raw = await request.body()
            except TimeoutError:
                raise ServingError(408, f"Request body not received within {limits.body_timeout_s:g} s") from None
            # Outside a slot: a request that finds a new config loads it without holding up predictions.
            await run_in_threadpool(manager.refresh)
            async with gate.slot():
                return await run_in_threadpool(_predict_route, manager, route, raw)

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def rest_api(request: Request) -> Response:
        path = _raw_path(request.scope)
        if not V1_PATH.fullmatch(path):
            raise ServingError(404, f"Not found: {request.method} {path}")
        route = parse_route(request.method, path)
        if request.method == "GET":
            return JSONResponse(await run_in_threadpool(_status_route, manager, route))
        if route.verb != "predict":
            raise ServingError(400, f"Malformed request: {request.method} {path} (only :predict is implemented)")
        return await predict_request(route, request)

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port`; port 0 takes any free one (see `getsockname()`)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def build_parser(defaults: ServingLimits) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_config_file", required=True, type=Path)
    parser.add_argument("--rest_api_port", type=int, default=8501, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1", help="loopback unless told otherwise")
    parser.add_argument("--port_file", type=Path, help="write the port bound here")
    parser.add_argument("--max_body_bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max_in_flight", type=int, default=defaults.max_in_flight)
    parser.add_argument("--max_queued", type=int, default=defaults.max_queued)
    parser.add_argument("--body_timeout_s", type=float, default=defaults.body_timeout_s)
    for flag in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
        parser.add_argument(f"--{flag}", type=int, default=getattr(defaults, flag), help="0: TensorFlow picks")
    return parser


def set_tensorflow_threads(limits: ServingLimits) -> None:
    """TF Serving's `--tensorflow_{intra,inter}_op_parallelism`: before any model loads (0 leaves TF's)."""
    import tensorflow as tf

    if limits.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(limits.tensorflow_intra_op_parallelism)
    if limits.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(limits.tensorflow_inter_op_parallelism)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    try:
        args = build_parser(ServingLimits.from_env()).parse_args(argv)
        limits = ServingLimits(args.max_body_bytes, args.max_in_flight, args.max_queued, args.body_timeout_s,
                               args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism)  # fmt: skip
    except ConfigError as err:
        raise SystemExit(f"local_server: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_tensorflow_threads(limits)
    sock = bind(args.host, args.rest_api_port)
    port = sock.getsockname()[1]
    if args.port_file:
        staging = args.port_file.with_name(f".{args.port_file.name}.tmp")
        staging.write_text(str(port))
        staging.replace(args.port_file)
    print(f"local TF Serving REST API listening on {args.host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(args.model_config_file, limits), log_level="warning"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
