"""The prediction service (FastAPI): flights by key in, delay probabilities out.

`POST /v1/predict` with an API key (`Authorization: Bearer <key>` or `X-API-Key`):

1. the flights are checked (a 422 names the field) and their schedule-time inputs derived
   (`include/predict/flights.py`, as cleaning derives them);
2. the rest of the model's inputs are read from Feast's online store (`include/predict/online.py`);
3. each flight goes to `stable` or, for `canary_percent` % of flight keys (sticky), to `canary`, through
   TF Serving's REST API (`include/serving/client.py`); a canary that fails is answered by `stable`, and
   its error is logged against the canary;
4. every prediction is logged (`include/predict/served.py`) and counted in the Prometheus metrics.

`GET /healthz` says the process lives; `GET /readyz` that serving and the online store answer;
`GET /metrics` is Prometheus's. Nothing is read or opened at import: `create_app` builds it all.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from include.contract.features import MODEL_FEATURES
from include.contract.inputs import records_to_columns
from include.predict.batching import Coalescer
from include.predict.flights import PredictRequest, PredictResponse, arm_of, entity_records
from include.predict.flights import warm as warm_flights

if TYPE_CHECKING:
    from include.core.config import PredictService, Settings

log = logging.getLogger(__name__)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("nightshift_predict_requests", "HTTP requests to /v1/predict by status code",
                                ["code"], registry=self.registry)  # fmt: skip
        self.flights = Counter("nightshift_predict_flights", "Flights scored, by arm and model version",
                               ["arm", "version"], registry=self.registry)  # fmt: skip
        self.errors = Counter("nightshift_predict_errors", "Flights a serving call failed for, by arm and version",
                              ["arm", "version"], registry=self.registry)  # fmt: skip
        self.latency = Histogram(
            "nightshift_predict_latency_seconds", "Request latency (features, model, log), by arm and version",
            ["arm", "version"], registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5),
        )  # fmt: skip
        self.unknown = Counter(
            "nightshift_predict_unknown_entities",
            "Flights scored with an entity the online store did not know",
            registry=self.registry,
        )

    def watch(self, served: Any) -> None:
        """The served-prediction log's own health, read when Prometheus scrapes: what waits to be written,
        the flushes that failed (the lake or Postgres away), and the rows dropped past its cap."""
        from prometheus_client import Gauge

        for name, text, read in (
            ("nightshift_predict_log_pending_rows", "Served predictions not yet written", served.pending_rows),
            ("nightshift_predict_log_failed_flushes", "Flushes of the served log that failed and were kept",
             lambda: served.failed_flushes),
            ("nightshift_predict_log_dropped_rows", "Served predictions dropped past the log's cap",
             lambda: served.dropped),
        ):  # fmt: skip
            Gauge(name, text, registry=self.registry).set_function(read)

    def watch_batches(self, batcher: Coalescer[Any]) -> None:
        """How much concurrent requests share batches: requests waiting (a gauge), and the batches scored
        and the requests in them (counters, `_total`), read when Prometheus scrapes."""
        from prometheus_client import Gauge
        from prometheus_client.core import CounterMetricFamily

        Gauge("nightshift_predict_queued_requests", "Requests waiting for a batch",
              registry=self.registry).set_function(lambda: batcher.queued)  # fmt: skip

        class Batches:
            def collect(self) -> Any:
                yield CounterMetricFamily("nightshift_predict_batches", "Batches scored", value=batcher.batches)
                yield CounterMetricFamily("nightshift_predict_batched_requests", "Requests scored in batches",
                                          value=batcher.items)  # fmt: skip

        self.registry.register(Batches())


@dataclass(frozen=True)
class Job:
    """One request waiting to be scored: its flights, its id, and when it arrived (for its latency)."""

    request: PredictRequest
    request_id: str
    started: float


class Service:
    """What one running service holds: the store, the serving client, the keys, the routes, the log."""

    def __init__(self, settings: Settings, config: PredictService) -> None:
        from include.core.lake import lake_root
        from include.predict.keys import KeyRing
        from include.predict.online import OnlineFeatures, open_online_store
        from include.predict.routing import RouteCache
        from include.predict.served import ServedLog
        from include.serving.client import ServingClient

        url = settings.require_database_url()
        self.settings, self.config = settings, config
        self.online = OnlineFeatures(open_online_store(settings))
        self.client = ServingClient(settings.replica_urls, settings.model_name, timeout=config.serving_timeout_s,
                                    retries=1, backoff=0.05)  # fmt: skip
        self.keys = KeyRing(url, config.state_ttl_s)
        self.routes = RouteCache(settings, config.state_ttl_s)
        self.log = ServedLog(lake_root(settings), url, config.log_batch_rows, config.log_flush_s)
        self.metrics = Metrics()
        self.metrics.watch(self.log)
        self.batcher = Coalescer(self.score_batch, config.batch_max_flights, config.batches_in_flight)
        self.metrics.watch_batches(self.batcher)

    def close(self) -> None:
        self.log.close()
        self.client.close()

    def score_batch(self, jobs: list[Job]) -> list[PredictResponse | HTTPException]:
        """The requests of a batch scored together: one online-store read and one serving call per arm for
        all their flights. Each request gets its own answer, or the HTTPException meant for it."""
        from include.serving.client import ServingError

        routes = self.routes.get()
        if routes.version("stable") is None:
            return [HTTPException(503, "no model is serving yet: deploy one (nightshift_deploy) first") for _ in jobs]
        flights = [f for job in jobs for f in job.request.flights]
        owner = [n for n, job in enumerate(jobs) for _ in job.request.flights]
        records, unknown = entity_records(flights)
        missing = self.online.lookup(records)
        unknown = [a + b for a, b in zip(unknown, missing, strict=True)]
        columns = records_to_columns(records)
        keys = [f.key for f in flights]
        arms = [arm_of(k, routes.canary_percent) for k in keys]
        answer: dict[int, tuple[float | None, str, str | None]] = {}  # flight → (p, arm that served, error)
        logged: list[list[dict[str, Any]]] = [[] for _ in jobs]
        for arm in ("canary", "stable"):
            chosen = [i for i, a in enumerate(arms) if a == arm]
            if arm == "stable":  # and the canary's flights its failure left unanswered
                chosen += [i for i, a in enumerate(arms) if a == "canary" and i not in answer]
            if not chosen:
                continue
            version = routes.version(arm)
            called = time.perf_counter()
            try:
                asked = {f: [values[i] for i in chosen] for f, values in columns.items()}
                outputs = self.client.predict_columns(asked, version=version)
                error = None
            except ServingError as err:
                outputs, error = [None] * len(chosen), f"{arm} v{version}: {err}"
                self.metrics.errors.labels(arm, str(version)).inc(len(chosen))
                self.routes.invalidate()  # the labels may have moved since they were read
                log.warning("requests %s: %s", ", ".join(sorted({jobs[owner[i]].request_id for i in chosen})), error)
            took_ms = (time.perf_counter() - called) * 1000
            for i, out in zip(chosen, outputs, strict=True):
                p = None if out is None else float(out[0] if isinstance(out, list) else out)
                if error is None or arm == "stable":
                    answer[i] = (p, arm, error)
                features = {f: values[i] for f, values in columns.items()}
                logged[owner[i]].append(self._row(jobs[owner[i]].request_id, flights[i], features, version, arm, p,
                                                  error, unknown[i], took_ms))  # fmt: skip
            if error is None:
                self.metrics.flights.labels(arm, str(version)).inc(len(chosen))
        outcomes: list[PredictResponse | HTTPException] = []
        first = 0
        for n, job in enumerate(jobs):
            mine = range(first, first + len(job.request.flights))
            first = mine.stop
            try:  # one request's answer failing is that request's 500, not its batch's
                outcomes.append(self._answer(job, [answer[i] for i in mine], [keys[i] for i in mine],
                                             [unknown[i] for i in mine], logged[n], routes))  # fmt: skip
            except Exception as err:
                log.exception("request %s: its answer failed", job.request_id)
                outcomes.append(HTTPException(500, f"request {job.request_id} failed: {type(err).__name__}"))
        return outcomes

    def _answer(
        self, job: Job, answer: list[tuple[float | None, str, str | None]], keys: list[str],
        unknown: list[list[str]], logged: list[dict[str, Any]], routes: Any,
    ) -> PredictResponse | HTTPException:  # fmt: skip
        if all(p is None for p, _, _ in answer):
            self.log.add(logged)
            # The caller learns that serving failed, not where serving is or what it said: that is in the log.
            return HTTPException(503, f"serving failed for this request ({job.request_id}); try again shortly")
        predictions = [
            {"flight_key": key, "p_delayed": p, "model_version": routes.version(arm), "arm": arm,
             "unknown": missing, "error": "serving failed" if error else None}
            for key, (p, arm, error), missing in zip(keys, answer, unknown, strict=True)
        ]  # fmt: skip
        response = PredictResponse(predictions=predictions, request_id=job.request_id)  # built before it is logged
        total = time.perf_counter() - job.started
        for row in logged:
            row["latency_ms"] = total * 1000
        if self.config.log_served:
            self.log.add(logged)
        for arm in set(a for _, a, _ in answer):
            self.metrics.latency.labels(arm, str(routes.version(arm))).observe(total)
        self.metrics.unknown.inc(sum(1 for u in unknown if u))
        return response

    @staticmethod
    def _row(request_id: str, flight: Any, features: Any, version: int | None, arm: str, p: float | None,
             error: str | None, unknown: list[str], serving_ms: float) -> dict[str, Any]:  # fmt: skip
        import datetime as dt

        return {
            "request_id": request_id, "flight_key": flight.key, "flight_date": flight.flight_date,
            "flight": flight.flight, "route": f"{flight.origin}-{flight.dest}",
            "sched_dep": flight.sched_dep.astimezone(dt.UTC),
            **{f: features[f] for f in MODEL_FEATURES},
            "model_version": version, "arm": arm, "p_delayed": p, "error": error, "unknown": "; ".join(unknown),
            "serving_ms": serving_ms, "latency_ms": None, "served_at": dt.datetime.now(dt.UTC),
        }  # fmt: skip


class BodyCap:
    """Refuses a request body over `max_bytes` with 413 without reading it whole: on its Content-Length,
    and for a chunked body as soon as what has arrived passes the cap."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or len(declared) > 19 or int(declared) > self.max_bytes):
            too_large = declared.isdigit()
            response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes" if too_large
                                     else "Content-Length is not a number"}, status_code=413 if too_large else 400,
                                    headers={"Connection": "close"})  # fmt: skip
            await response(scope, receive, send)
            return
        received = 0

        async def capped() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, capped, send)


def create_app(settings: Settings, config: PredictService) -> FastAPI:
    """The ASGI app; its resources open when the server starts it and close when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings, config)
        warm_flights()
        service.online.warm()
        service.log.start()
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="nightshift predictions", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyCap, max_bytes=config.max_body_bytes)

    def _service(request: Request) -> Service:
        return request.app.state.service

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        request.app.state.service.metrics.requests.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.app.state.service.metrics.requests.labels("422").inc()
        return await request_validation_exception_handler(request, exc)

    # The answer is built as a PredictResponse and written once: FastAPI would validate it again field by
    # field (the OpenAPI schema still says what it is).
    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(body: PredictRequest, request: Request) -> Response:
        started = time.perf_counter()
        service = _service(request)
        key = await _authenticate(service, request)
        wait = service.keys.allow(key)
        if wait > 0:
            raise HTTPException(429, f"rate limit of {key.requests_per_minute} requests a minute reached",
                                headers={"Retry-After": str(max(1, round(wait)))})  # fmt: skip
        if len(body.flights) > config.max_flights:
            raise HTTPException(422, f"flights: at most {config.max_flights} in one request")
        response = await service.batcher.submit(Job(body, uuid.uuid4().hex, started), len(body.flights))
        service.metrics.requests.labels("200").inc()
        return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        service = _service(request)
        try:
            routes = service.routes.get()
            status = {arm: service.client.status(version=v)[0]["state"] for arm, v in routes.labels.items()}
        except Exception as err:  # any failure means not ready; say which
            return JSONResponse({"ready": False, "problem": f"{type(err).__name__}: {err}"[:300]}, status_code=503)
        ready = bool(status) and all(s == "AVAILABLE" for s in status.values())
        return JSONResponse({"ready": ready, "versions": routes.labels, "state": status,
                             "canary_percent": routes.canary_percent}, status_code=200 if ready else 503)  # fmt: skip

    @app.get("/metrics")
    def metrics(request: Request) -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(_service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _authenticate(service: Service, request: Request) -> Any:
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not key:
        raise HTTPException(401, "an API key is required (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    known, found = service.keys.cached(key)
    if not known:
        found = await run_in_threadpool(service.keys.check, key)
    if found is None:
        raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return found


def serve(settings: Settings, config: PredictService) -> None:
    """Run the service on `config.host:config.port` until SIGINT/SIGTERM (uvicorn's own handling)."""
    import os

    import uvicorn

    os.environ.setdefault("PGCONNECT_TIMEOUT", "10")  # Feast's online-store connections give up connecting
    server = uvicorn.Server(uvicorn.Config(create_app(settings, config), host=config.host, port=config.port,
                                           log_level="info", access_log=False))  # fmt: skip
    server.run()


@contextlib.contextmanager
def running(settings: Settings, config: PredictService) -> Iterator[tuple[str, FastAPI]]:
    """The service in a thread of this process on a port the OS picks (`config.port` is ignored): yields its
    URL and app, and stops it (writing the rest of its log) on the way out. For the demo and the tests."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind((config.host, 0))
    app = create_app(settings, config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="predict-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the prediction service did not start (see its log above)")
        time.sleep(0.05)
    try:
        yield f"http://{config.host}:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=90)
        sock.close()
