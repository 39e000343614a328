"""Attacks on the local TF-Serving-compatible server, run as its own process on a port it picks: bodies
too big to hold, more predictions than it can compute, a trickled body, malformed paths, a broken
`models.config`, and a reload under load. Each is refused (or survived) the way TF Serving users expect.

The served model is a tiny SavedModel whose `spin` input makes one call take as long as the test needs,
so "while a prediction runs" and "while a version loads" are facts, not timing guesses.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from include.core.config import load_settings
from include.serving.config import WARMUP_FILE, ModelEntry, write_models_config
from include.serving.process import local_server

MODEL = "spin"
MIB = 1024 * 1024
DEFAULT_CAP = 10 * MIB
# About 6 µs per spin on this machine: 300k is a prediction of a few seconds.
SLOW_SPIN = 300_000


def _export_spin_model(path: Path, warmup_spins: tuple[int, ...] = ()) -> None:
    """`y = 2x`, after counting to max(spin); warmup records (one per spin) make loading take as long."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    class Spin(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="spin")])  # fmt: skip
        def serve(self, x, spin):
            n = tf.reduce_max(tf.concat([spin, tf.zeros([1], tf.int64)], 0))
            counted = tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0, tf.int64)])
            return {"y": x * 2.0 + tf.cast(counted - n, tf.float32)}

    module = Spin()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    if warmup_spins:
        (path / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(path / WARMUP_FILE)) as writer:
            for spins in warmup_spins:
                request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
                request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], tf.float32))
                request.inputs["spin"].CopyFrom(tf.make_tensor_proto([spins], tf.int64))
                entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(entry.SerializeToString())


def _row(spin: int = 0) -> dict:
    return {"instances": [{"x": 1.5, "spin": spin}]}


@contextlib.contextmanager
def _serve(root: Path, **limits: object) -> Iterator[tuple[str, Path]]:
    """The real server process over `root` (version 1 as `stable`), with `NIGHTSHIFT_SERVING_<LIMIT>`s."""
    (root / MODEL).mkdir(parents=True, exist_ok=True)
    if not (root / MODEL / "1").exists():
        _export_spin_model(root / MODEL / "1")
    write_models_config(root / "models.config", [ModelEntry(MODEL, str(root / MODEL), [1], {"stable": 1})])
    env = {**os.environ, "NIGHTSHIFT_SERVING_DIR": str(root), "NIGHTSHIFT_SERVING_URL": "http://127.0.0.1:0"}
    env.update({f"NIGHTSHIFT_SERVING_{name.upper()}": str(value) for name, value in limits.items()})
    with local_server(load_settings(env), env=env, timeout_s=180) as url:
        assert httpx.post(f"{url}/v1/models/{MODEL}:predict", json=_row(), timeout=30).status_code == 200
        yield url, root


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """Default limits: a 10 MiB body cap."""
    with _serve(tmp_path_factory.mktemp("serving")) as served:
        yield served


@pytest.fixture(scope="module")
def narrow_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """One prediction at a time, two waiting, a body within 2 s."""
    with _serve(tmp_path_factory.mktemp("narrow"), max_in_flight=1, max_queued=2, body_timeout_s=2) as served:
        yield served


def _connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed without an answer; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, json.loads(body)


def _predict_head(length: str | None = None, chunked: bool = False) -> bytes:
    lines = [f"POST /v1/models/{MODEL}:predict HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}"] if length else []
    lines += ["Transfer-Encoding: chunked"] if chunked else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_claiming_100_mib_is_refused_on_its_header_before_it_is_read(server) -> None:
    url, _ = server
    with _connect(url, timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(_predict_head(length=str(100 * MIB)) + b'{"instances": [' + b" " * 4096)
        status, headers, body = _read_response(sock)  # before the fix: waits for 100 MiB that never come
        elapsed = time.monotonic() - started
    assert status == 413, body
    assert set(body) == {"error"}
    assert str(DEFAULT_CAP) in body["error"]
    assert headers.get("connection") == "close"
    assert elapsed < 5
    just_under = json.dumps(_row()).encode().ljust(DEFAULT_CAP - 1024)  # JSON allows the trailing spaces
    assert httpx.post(f"{url}/v1/models/{MODEL}:predict", content=just_under, timeout=60).status_code == 200


def test_a_chunked_body_is_cut_off_once_it_passes_the_cap(server) -> None:
    url, _ = server
    chunk = b" " * (256 * 1024)
    sent = 0
    with _connect(url, timeout=30) as sock:
        sock.sendall(_predict_head(chunked=True))
        answered = False
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 3 * DEFAULT_CAP:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    answered = True
                    break
        if not answered:  # before the fix: the server waits for the last chunk, which never comes
            assert select.select([sock], [], [], 10)[0], f"no answer after {sent} bytes"
        status, _headers, body = _read_response(sock)
    assert status == 413, body
    assert "over the limit" in body["error"]
    assert sent < 2 * DEFAULT_CAP, f"the server read {sent} bytes before refusing"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/models/{MODEL}/versions/%C2%B2"),  # superscript two: isdigit() but not a number
        ("POST", f"/v1/models/{MODEL}/versions/%C2%B2:predict"),
        ("GET", f"/v1/models/{MODEL}/versions/%D9%A1"),  # Arabic-Indic one: int() would take it
        ("GET", f"/v1/models/{MODEL}/versions/1x"),
        ("GET", f"/v1/models/{MODEL}/versions/99999999999999999999"),  # past int64
        ("GET", f"/v1/models/{MODEL}:predict"),
        ("POST", f"/v1/models/{MODEL}"),
        ("PUT", f"/v1/models/{MODEL}:predict"),
    ],
    ids=[
        "superscript-version",
        "superscript-version-predict",
        "arabic-digit",
        "not-a-number",
        "past-int64",
        "get-predict",
        "post-without-verb",
        "put",
    ],
)
def test_a_malformed_path_gets_400(server, method, path) -> None:
    url, _ = server
    response = httpx.request(method, url + path, json=_row() if method != "GET" else None, timeout=30)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


def test_an_unparseable_models_config_keeps_the_last_good_one(server) -> None:
    url, root = server
    config = root / "models.config"
    good = config.read_text()
    try:
        config.write_text("model_config_list { config { name: 'spin' base_path: ")  # cut off mid-write
        for _ in range(3):
            assert httpx.post(f"{url}/v1/models/{MODEL}/labels/stable:predict", json=_row(), timeout=30).json() == {
                "predictions": [3.0]
            }
        assert httpx.get(f"{url}/v1/models/{MODEL}", timeout=30).status_code == 200
        log = (root / "server.log").read_text()
        assert "ParseError" in log
        assert str(config) in log
        assert log.count("not loaded, still serving the last good config") == 1  # once per change, not per request
    finally:
        config.write_text(good)
    write_models_config(config, [ModelEntry(MODEL, str(root / MODEL), [1], {"stable": 1, "canary": 1})])
    assert httpx.get(f"{url}/v1/models/{MODEL}/labels/canary", timeout=30).status_code == 200  # the fixed one


def test_predictions_beyond_the_queue_get_503_at_once(narrow_server) -> None:
    url, _ = narrow_server
    answers: list[tuple[int, float, dict]] = []

    def slow_predict() -> None:
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/models/{MODEL}:predict", json=_row(SLOW_SPIN), timeout=120)
        answers.append((response.status_code, time.monotonic() - started, response.json()))

    burst = [threading.Thread(target=slow_predict) for _ in range(5)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(180)
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200, 200, 503, 503], answers  # one running, two queued, the rest refused
    refused = [(elapsed, body) for status, elapsed, body in answers if status == 503]
    computed = [elapsed for status, elapsed, _ in answers if status == 200]
    assert all(set(body) == {"error"} and "retry" in body["error"] for _, body in refused)
    assert max(elapsed for elapsed, _ in refused) < min(computed)  # refused at once, not after waiting
    assert httpx.post(f"{url}/v1/models/{MODEL}:predict", json=_row(), timeout=30).status_code == 200


def test_a_trickled_body_times_out_and_frees_its_place(narrow_server) -> None:
    url, _ = narrow_server
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(_connect(url, timeout=15)) for _ in range(3)]
        for sock in socks:  # every place taken by a request that never finishes its body
            sock.sendall(_predict_head(length="1000") + b'{"instances": ')
        started = time.monotonic()
        answers = [_read_response(sock) for sock in socks]
        elapsed = time.monotonic() - started
    assert [status for status, _, _ in answers] == [408, 408, 408], answers
    assert elapsed < 10
    assert httpx.post(f"{url}/v1/models/{MODEL}:predict", json=_row(), timeout=30).status_code == 200


def test_predictions_keep_answering_while_a_version_loads(narrow_server) -> None:
    """Version 2 takes seconds to load (its warmup replays slow calls). Two clients keep predicting on
    version 1 and a third polls version 2, against a server that computes one prediction at a time:
    whichever request finds the new config loads it, without holding the others up."""
    url, root = narrow_server
    _export_spin_model(root / MODEL / "2", warmup_spins=(SLOW_SPIN // 2,) * 6)
    done: list[tuple[float, int]] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                response = client.post(f"{url}/v1/models/{MODEL}/labels/stable:predict", json=_row())
                done.append((time.monotonic(), response.status_code))

    clients = [threading.Thread(target=keep_predicting) for _ in range(2)]
    for thread in clients:
        thread.start()
    time.sleep(1)
    write_models_config(root / "models.config", [ModelEntry(MODEL, str(root / MODEL), [1, 2], {"stable": 1})])
    changed = time.monotonic()
    try:
        with httpx.Client(timeout=120) as poll:
            while (status := poll.post(f"{url}/v1/models/{MODEL}/versions/2:predict", json=_row()).status_code) != 200:
                assert status == 404, f"version 2 answered {status} while loading"  # not loaded yet: no such version
                assert time.monotonic() < changed + 120, "version 2 never became AVAILABLE"
                time.sleep(0.05)
        loaded = time.monotonic()
    finally:
        stop.set()
        for thread in clients:
            thread.join(120)
    loading = loaded - changed
    answered = [changed, *sorted(at for at, _ in done if changed < at < loaded), loaded]
    longest_wait = max(later - earlier for earlier, later in itertools.pairwise(answered))
    assert loading > 2, "the load was too quick to show anything"
    assert all(status == 200 for _, status in done), sorted({status for _, status in done})
    assert len(answered) - 2 >= 5, f"only {len(answered) - 2} predictions answered in the {loading:.1f} s of loading"
    assert longest_wait < loading / 2, f"predictions stalled {longest_wait:.1f} s of the {loading:.1f} s load"
