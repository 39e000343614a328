"""TF Serving REST API contract, written from TF Serving's REST API documentation.

Runs against the local server (started here on a port it picks, over a temporary base path), and
against a real TF Serving when TF_SERVING_URL points at one serving this test's models.config
(base path in TF_SERVING_BASE_PATH, polled with --model_config_file_poll_wait_seconds).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from include.contract.features import MODEL_FEATURES
from include.serving.client import ServingClient, ServingError
from include.serving.config import ModelEntry, read_models_config, write_models_config
from include.serving.process import is_up, local_server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clients_closed")]
MODEL = "flight_delay"


def _export(path: Path, seed: int) -> None:
    import keras

    from include.trainer.model import FeatureStats, build_model

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f: rng.normal(size=50) for f in MODEL_FEATURES})
    for column in ("carrier", "origin", "dest", "tailnum"):
        frame[column] = rng.choice(["UA", "JFK", "LAX", "N1"], size=50)
    hp = {"units": 8, "layers": 1, "dropout": 0.0, "embedding_dim": 4, "learning_rate": 1e-3}
    build_model(FeatureStats.from_frame(frame), hp).export(str(path), format="tf_saved_model", verbose=False)


def _row(**changes) -> dict:
    row = {f: 0.5 for f in MODEL_FEATURES}
    row.update(carrier="UA", origin="JFK", dest="LAX", tailnum="N1")
    row.update(changes)
    return row


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = Path(os.environ.get("TF_SERVING_BASE_PATH") or tmp_path_factory.mktemp("serving"))
    for version, seed in ((1, 1), (2, 2)):
        _export(root / MODEL / str(version), seed)
    write_models_config(
        root / "models.config", [ModelEntry(MODEL, str(root / MODEL), [1, 2], {"stable": 1, "canary": 2})]
    )
    return root


@pytest.fixture(scope="module")
def url(base) -> Iterator[str]:
    if os.environ.get("TF_SERVING_URL"):
        yield os.environ["TF_SERVING_URL"]
        return
    import uvicorn

    from include.serving.local_server import bind, create_app

    sock = bind("127.0.0.1", 0)  # held from here on: no other process can take the port meanwhile
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(base / "models.config"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def client(url) -> Iterator[ServingClient]:
    with ServingClient(url, MODEL, retries=1, backoff=0.1) as client:
        yield client


def test_model_status_lists_every_version_available(client) -> None:
    states = {s["version"]: s["state"] for s in client.status()}
    assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}
    assert client.status(version=2)[0]["status"] == {"error_code": "OK", "error_message": ""}


def test_labels_route_to_their_versions(client) -> None:
    assert client.status(label="stable")[0]["version"] == "1"
    assert client.status(label="canary")[0]["version"] == "2"


def test_metadata_shows_the_serving_signature_over_raw_features(client) -> None:
    meta = client.metadata(version=1)
    assert meta["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    inputs = client.signature_inputs(version=1)
    assert sorted(inputs) == sorted(MODEL_FEATURES)
    assert inputs["carrier"] == "DT_STRING"
    assert inputs["temp"] == "DT_FLOAT"


def test_row_and_columnar_predictions_equal_the_saved_model(client, base) -> None:
    import tensorflow as tf

    rows = [_row(), _row(carrier="ZZ", temp=float("nan")), _row(distance=2500.0)]
    by_rows = client.predict_rows(rows, version=2)
    columns = {f: [r[f] for r in rows] for f in MODEL_FEATURES}
    by_columns = client.predict_columns(columns, label="canary")
    signature = tf.saved_model.load(str(base / MODEL / "2")).signatures["serving_default"]
    direct = signature(**{
        f: tf.constant([r[f] if r[f] is not None else np.nan for r in rows],
                       dtype=tf.string if isinstance(rows[0][f], str) else tf.float32)
        for f in MODEL_FEATURES
    })  # fmt: skip
    expected = next(iter(direct.values())).numpy()
    np.testing.assert_allclose(np.array(by_rows), expected, atol=1e-6)
    np.testing.assert_allclose(np.array(by_columns), expected, atol=1e-6)
    assert np.array(by_rows).shape == (3, 1)


@pytest.mark.parametrize(
    ("instance", "field"),
    [
        ({k: v for k, v in _row().items() if k != "distance"}, "distance"),
        (_row(flight_number=123), "flight_number"),
        (_row(distance="far"), "distance"),
        (_row(carrier=7), "carrier"),
        (_row(temp=None), "temp"),
    ],
    ids=["missing", "extra", "wrong-type-number", "wrong-type-string", "null-number"],
)
def test_bad_requests_get_400_naming_the_field(url, instance, field) -> None:
    response = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [instance]})
    assert response.status_code == 400
    assert field in response.json()["error"]


def test_errors_have_tf_servings_shape(url) -> None:
    unknown_model = httpx.get(f"{url}/v1/models/nope")
    assert unknown_model.status_code == 404
    assert set(unknown_model.json()) == {"error"}
    assert httpx.get(f"{url}/v1/models/{MODEL}/versions/9").status_code == 404
    assert httpx.get(f"{url}/v1/models/{MODEL}/labels/nope").status_code == 404
    not_json = httpx.post(f"{url}/v1/models/{MODEL}:predict", content=b"{nope")
    assert not_json.status_code == 400
    assert "error" in not_json.json()


def test_client_raises_the_servers_message(client) -> None:
    with pytest.raises(ServingError, match="Servable not found") as caught:
        client.status(version=9)
    assert caught.value.status == 404


def test_client_retries_then_fails_when_serving_is_down(refused_url) -> None:
    started = time.monotonic()
    with (
        ServingClient(refused_url, MODEL, retries=2, backoff=0.05) as down,
        pytest.raises(ServingError, match=r"unreachable.*after 3 attempts"),
    ):
        down.status()
    assert time.monotonic() - started >= 0.15  # 0.05 + 0.10 of backoff


def test_reload_picks_up_new_versions_and_never_serves_a_corrupt_one(client, base) -> None:
    if os.environ.get("TF_SERVING_URL"):
        pytest.skip("writes into the served base path")
    corrupt = base / MODEL / "3"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"not a protobuf")
    _export(base / MODEL / "4", 4)
    entry = read_models_config(base / "models.config")[0]
    write_models_config(base / "models.config", [ModelEntry(MODEL, entry.base_path, [1, 2, 3, 4], entry.labels)])
    states = {s["version"]: s for s in client.status()}
    assert states["4"]["state"] == "AVAILABLE"
    assert states["3"]["state"] != "AVAILABLE"
    assert states["3"]["status"]["error_message"]
    with pytest.raises(ServingError) as caught:
        client.predict_rows([_row()], version=3)
    assert caught.value.status == 503
    assert client.status(label="stable")[0]["version"] == "1"  # untouched


def test_a_label_only_moves_to_a_version_already_available(client, base) -> None:
    """TF Serving: load the version first, then point the label at it, in two config changes."""
    if os.environ.get("TF_SERVING_URL"):
        pytest.skip("writes into the served base path")
    _export(base / MODEL / "5", 5)
    entry = read_models_config(base / "models.config")[0]
    at_once = ModelEntry(MODEL, entry.base_path, [*entry.versions, 5], {**entry.labels, "canary": 5})
    write_models_config(base / "models.config", [at_once])
    assert client.status(version=5)[0]["state"] == "AVAILABLE"
    assert client.status(label="canary")[0]["version"] == "2"  # the premature move was refused
    write_models_config(base / "models.config", [at_once])  # second step, now that 5 is AVAILABLE
    (base / "models.config").touch()
    os.utime(base / "models.config", ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert client.status(label="canary")[0]["version"] == "5"


def test_warmup_records_are_replayed_on_load(client, base) -> None:
    if os.environ.get("TF_SERVING_URL"):
        pytest.skip("reads the local server's state")
    from include.deploy.savedmodel import write_warmup
    from include.serving.config import WARMUP_FILE

    _export(base / MODEL / "6", 6)
    assert write_warmup(base / MODEL / "6", MODEL, [_row(), _row(carrier="AA")], records=3) == 3
    assert (base / MODEL / "6" / WARMUP_FILE).stat().st_size > 0
    entry = read_models_config(base / "models.config")[0]
    write_models_config(base / "models.config", [ModelEntry(MODEL, entry.base_path, [*entry.versions, 6],
                                                            entry.labels)])  # fmt: skip
    assert client.status(version=6)[0]["state"] == "AVAILABLE"
    assert client.predict_rows([_row()], version=6)


def test_the_local_server_binds_a_port_of_its_own_and_reports_it(settings, tmp_path) -> None:
    """Port 0 in NIGHTSHIFT_SERVING_URL: each server binds a free port itself, and `local_server` yields
    the URL it really serves on (no port is picked first and bound later, where another could take it)."""
    anywhere = dataclasses.replace(settings, serving_dir=tmp_path, serving_url="http://127.0.0.1:0")
    with local_server(anywhere) as first, local_server(anywhere) as second:
        ports = [int(u.rpartition(":")[2]) for u in (first, second)]
        assert 0 not in ports
        assert ports[0] != ports[1]
        assert is_up(first)
        assert is_up(second)
        with ServingClient(first, MODEL, retries=0) as on_first, pytest.raises(ServingError) as caught:
            on_first.status()
        assert caught.value.status == 404  # an empty models.config: the server itself, answering
        log = (tmp_path / "server.log").read_text()
        assert all(f"listening on 127.0.0.1:{port}" in log for port in ports)
    assert not is_up(first)
    assert not list(tmp_path.glob(".server-*.port"))
