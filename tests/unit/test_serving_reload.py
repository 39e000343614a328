"""The local server's ModelManager keeps answering from the versions it has while it loads new ones,
and from its last good config when a new one does not parse; its routes, limits and bind address.

The loader is a stand-in that blocks until the test lets it finish, so "while the load is in
progress" is a fact, not a timing guess.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.core.config import ConfigError
from include.serving.config import ModelEntry, ServingLimits, write_models_config
from include.serving.local_server import LoadedVersion, ModelManager, Route, ServingError, build_parser, parse_route

MODEL = "flight_delay"


class GatedLoader:
    """Loads instantly, except the versions in `gated`, which wait for `release`."""

    def __init__(self, gated: set[int]) -> None:
        self.gated = gated
        self.started, self.release = threading.Event(), threading.Event()
        self.active = self.most_active = 0
        self._count = threading.Lock()

    def __call__(self, version: int, path: Path, stamp: float) -> LoadedVersion:
        with self._count:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if version in self.gated:
                self.started.set()
                assert self.release.wait(30), "the test never released the load"
            return LoadedVersion(version, path, state="AVAILABLE", stamp=stamp)
        finally:
            with self._count:
                self.active -= 1


def _write(config: Path, entries: list[ModelEntry]) -> None:
    """Write models.config with a later mtime than before: file times tick coarser than these tests."""
    before = config.stat().st_mtime_ns if config.exists() else 0
    write_models_config(config, entries)
    later = max(config.stat().st_mtime_ns, before + 1_000_000)
    os.utime(config, ns=(later, later))


def _version(base: Path, version: int) -> None:
    (base / str(version)).mkdir(parents=True)
    (base / str(version) / "saved_model.pb").write_bytes(b"stand-in")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ModelManager, GatedLoader, Path]]:
    base = tmp_path / MODEL
    _version(base, 1)
    config = tmp_path / "models.config"
    _write(config, [ModelEntry(MODEL, str(base), [1], {"stable": 1})])
    loader = GatedLoader(gated={2})
    manager = ModelManager(config, loader=loader)
    assert manager.resolve(MODEL, None, "stable")[1].version == 1
    yield manager, loader, base
    loader.release.set()  # never leave a reload waiting, whatever the test did


def _reload_with_version_2(manager: ModelManager, loader: GatedLoader, base: Path) -> threading.Thread:
    _version(base, 2)
    _write(manager.config_file, [ModelEntry(MODEL, str(base), [1, 2], {"stable": 1})])
    reload = threading.Thread(target=manager.refresh, daemon=True)
    reload.start()
    assert loader.started.wait(10), "the reload never began loading version 2"
    return reload


def test_requests_to_a_loaded_version_are_answered_while_another_loads(served) -> None:
    manager, loader, base = served
    reload = _reload_with_version_2(manager, loader, base)
    answered: list[int] = []

    def request() -> None:
        answered.append(manager.resolve(MODEL, None, "stable")[1].version)
        answered.append(manager.resolve(MODEL, "1", None)[1].version)

    client = threading.Thread(target=request, daemon=True)
    client.start()
    client.join(5)
    still_loading = reload.is_alive()
    loader.release.set()
    reload.join(10)
    assert still_loading
    assert answered == [1, 1], "stable's requests waited for version 2 to load"


def test_the_new_version_is_served_once_loaded_and_only_one_refresher_loads(served) -> None:
    manager, loader, base = served
    reload = _reload_with_version_2(manager, loader, base)
    others = [threading.Thread(target=manager.refresh, daemon=True) for _ in range(3)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(5)
    assert not any(t.is_alive() for t in others), "a second refresher waited for the running load"
    with pytest.raises(ServingError, match="Specific"):
        manager.resolve(MODEL, "2", None)  # not loaded yet: the state in force has no version 2
    loader.release.set()
    reload.join(10)
    assert loader.most_active == 1
    assert manager.resolve(MODEL, "2", None)[1].state == "AVAILABLE"
    assert manager.resolve(MODEL, None, "stable")[1].version == 1


def test_a_label_moved_in_the_same_change_as_the_load_is_refused_until_the_next(served) -> None:
    """TF Serving's rule survives the lock-free reload: load first, then move the label."""
    manager, loader, base = served
    loader.release.set()
    _version(base, 2)
    _write(manager.config_file, [ModelEntry(MODEL, str(base), [1, 2], {"stable": 2})])
    assert manager.resolve(MODEL, None, "stable")[1].version == 1
    assert manager.resolve(MODEL, "2", None)[1].state == "AVAILABLE"
    _write(manager.config_file, [ModelEntry(MODEL, str(base), [1, 2], {"stable": 2})])  # the second step
    assert manager.resolve(MODEL, None, "stable")[1].version == 2


def test_an_unparseable_config_keeps_the_state_in_force_and_is_logged_once(served, caplog) -> None:
    """TF Serving keeps its last good config when a new one does not parse; so does the local server."""
    manager, loader, base = served
    loader.release.set()
    manager.config_file.write_text("model_config_list { config { name: ")
    with caplog.at_level("ERROR", logger="nightshift.serving"):
        for _ in range(3):
            assert manager.resolve(MODEL, None, "stable")[1].version == 1
    assert len(caplog.records) == 1
    assert "still serving the last good config" in caplog.text
    assert str(manager.config_file) in caplog.text
    _version(base, 2)
    _write(manager.config_file, [ModelEntry(MODEL, str(base), [1, 2], {"stable": 1})])  # fixed
    assert manager.resolve(MODEL, "2", None)[1].state == "AVAILABLE"


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/v1/models/m", Route("m", None, None, "status")),
        ("GET", "/v1/models/m/versions/12/metadata", Route("m", 12, None, "metadata")),
        ("GET", "/v1/models/m/labels/can%20ary", Route("m", None, "can ary", "status")),
        ("POST", "/v1/models/m/labels/stable:predict", Route("m", None, "stable", "predict")),
        ("POST", "/V1/MODELS/m/VERSIONS/3:PREDICT", Route("m", 3, None, "predict")),  # TF Serving's (?i)
        ("GET", "/v1/models/m/versions/" + "0" * 5000 + "7", Route("m", 7, None, "status")),
    ],
)
def test_paths_route_as_tf_serving_routes_them(method: str, path: str, route: Route) -> None:
    assert parse_route(method, path) == route


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/m/versions/%C2%B2"),
        ("GET", "/v1/models/m/versions/\u00b2"),
        ("GET", "/v1/models/m/versions/\u0663"),
        ("GET", "/v1/models/m/versions/-1"),
        ("GET", "/v1/models/m/versions/9223372036854775808"),
        ("GET", "/v1/models/m/versions/" + "1" * 5000),  # past int()'s own digit limit
        ("GET", "/v1/models/m:predict"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/m"),
        ("POST", "/v1/models/m/metadata"),
        ("DELETE", "/v1/models/m"),
    ],
)
def test_malformed_paths_are_400s(method: str, path: str) -> None:
    with pytest.raises(ServingError) as caught:
        parse_route(method, path)
    assert caught.value.status == 400


def test_serving_limits_come_from_the_environment_and_are_checked() -> None:
    assert ServingLimits.from_env({}).max_body_bytes == 10 * 1024 * 1024
    limits = ServingLimits.from_env({"NIGHTSHIFT_SERVING_MAX_IN_FLIGHT": "2", "NIGHTSHIFT_SERVING_MAX_QUEUED": "0"})
    assert (limits.max_in_flight, limits.max_queued) == (2, 0)
    with pytest.raises(ConfigError, match="NIGHTSHIFT_SERVING_MAX_BODY_BYTES"):
        ServingLimits.from_env({"NIGHTSHIFT_SERVING_MAX_BODY_BYTES": "ten"})
    with pytest.raises(ConfigError, match="NIGHTSHIFT_SERVING_MAX_IN_FLIGHT=0"):
        ServingLimits.from_env({"NIGHTSHIFT_SERVING_MAX_IN_FLIGHT": "0"})
    # TF Serving's thread flags: one thread each unless told; 0 lets TensorFlow pick; below 0 is refused.
    default = build_parser(ServingLimits.from_env({})).parse_args(["--model_config_file", "m"])
    assert (default.tensorflow_intra_op_parallelism, default.tensorflow_inter_op_parallelism) == (1, 1)
    told = ServingLimits.from_env({"NIGHTSHIFT_SERVING_TENSORFLOW_INTRA_OP_PARALLELISM": "0"})
    assert build_parser(told).parse_args(["--model_config_file", "m", "--tensorflow_inter_op_parallelism", "4"]
                                         ).tensorflow_inter_op_parallelism == 4  # fmt: skip
    assert told.tensorflow_intra_op_parallelism == 0
    with pytest.raises(ConfigError, match="TENSORFLOW_INTER_OP_PARALLELISM=-1"):
        ServingLimits.from_env({"NIGHTSHIFT_SERVING_TENSORFLOW_INTER_OP_PARALLELISM": "-1"})


def test_the_server_binds_loopback_unless_told_otherwise() -> None:
    args = build_parser(ServingLimits()).parse_args(["--model_config_file", "models.config"])
    assert args.host == "127.0.0.1"
