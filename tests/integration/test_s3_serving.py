"""A serving base path on S3 (moto in server mode): the deploy uploads a version with `saved_model.pb`
last, and the local server sees a version only once that file is there, loading a local copy of it.

The loader is the real one (`load_version`) on a folder without a SavedModel, so what it reports is
what a half-uploaded version would give; the whole chain with a real model is test_s3_demo.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from include.serving.config import ModelEntry, write_models_config
from tests.s3_fixtures import BUCKET, connection_env, keys, moto_endpoint

pytestmark = pytest.mark.integration

CONN_ID = "test_s3_serving"
MODEL = "flight_delay"


@pytest.fixture(scope="module")
def s3():
    with moto_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def s3_settings(s3, monkeypatch, tmp_path):
    from include.core.config import load_settings
    from include.core.lake import credentials_env

    for name, value in connection_env(CONN_ID, s3.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NIGHTSHIFT_LAKE", f"s3://{BUCKET}/lake")
    monkeypatch.setenv("NIGHTSHIFT_LAKE_CONN_ID", CONN_ID)
    monkeypatch.delenv("NIGHTSHIFT_SERVING_MODEL_BASE_PATH", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_LOCAL_DIR", str(tmp_path / "local"))
    monkeypatch.setenv("NIGHTSHIFT_SERVING_DIR", str(tmp_path / "serving"))  # not the session's, with its versions
    settings = load_settings()
    for name, value in credentials_env(settings).items():  # as the serving process gets them
        monkeypatch.setenv(name, value)
    return settings


def _version_folder(root: Path) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "assets.extra").mkdir()
    (root / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"warmup")
    (root / "saved_model.pb").write_bytes(b"graph")
    return root


def test_an_s3_lake_serves_from_its_serving_prefix_with_the_lakes_credentials(s3_settings, s3) -> None:
    from include.core.lake import credentials_env

    assert s3_settings.serving_model_base == f"s3://{BUCKET}/lake/serving/{MODEL}"
    env = credentials_env(s3_settings)
    assert env["AWS_ENDPOINT_URL"] == s3.url
    assert env["AWS_ACCESS_KEY_ID"] == "testing"


def test_a_version_is_uploaded_with_saved_model_pb_last_and_once(s3_settings, s3, tmp_path, monkeypatch) -> None:
    from airflow.sdk import ObjectStoragePath

    from include.deploy.published import publish

    local = _version_folder(tmp_path / "3")
    written: list[str] = []
    real_write = ObjectStoragePath.write_bytes

    def spy(self, data):
        written.append(self.name)
        return real_write(self, data)

    monkeypatch.setattr(ObjectStoragePath, "write_bytes", spy)
    where = publish(s3_settings, local, 3)
    assert where == f"s3://{BUCKET}/lake/serving/{MODEL}/3"
    assert written[-1] == "saved_model.pb"
    assert len(written) == 3
    assert keys(s3.client, f"lake/serving/{MODEL}/3/") == {
        f"lake/serving/{MODEL}/3/{name}"
        for name in ("saved_model.pb", "variables/variables.index", "assets.extra/tf_serving_warmup_requests")
    }
    written.clear()
    assert publish(s3_settings, local, 3) == where  # a retry finds it complete and writes nothing
    assert written == []


def test_the_local_server_loads_a_remote_version_only_once_its_saved_model_pb_is_there(
    s3_settings, s3, tmp_path, monkeypatch
) -> None:
    from include.serving import remote_base
    from include.serving.local_server import ModelManager

    monkeypatch.setattr(remote_base, "POLL_S", 0.0)  # no waiting out the poll interval
    base = f"s3://{BUCKET}/lake/serving/{MODEL}"
    prefix = f"lake/serving/{MODEL}/7/"
    s3.client.put_object(Bucket=BUCKET, Key=prefix + "variables/variables.index", Body=b"index")  # half uploaded
    config = tmp_path / "models.config"
    write_models_config(config, [ModelEntry(MODEL, base, [7], {})])
    manager = ModelManager(config)
    manager.refresh()
    loaded = manager.models[MODEL].versions[7]
    assert loaded.state == "END"
    assert "Could not find SavedModel" in loaded.error
    assert (loaded.path / "variables" / "variables.index").read_bytes() == b"index"  # a local copy
    first_copy = loaded.path

    s3.client.put_object(Bucket=BUCKET, Key=prefix + "saved_model.pb", Body=b"not a graph")
    manager.refresh()  # the store changed: the version is fetched again, with its saved_model.pb
    loaded = manager.models[MODEL].versions[7]
    assert (loaded.path / "saved_model.pb").read_bytes() == b"not a graph"
    assert loaded.state == "END"
    assert "Could not find SavedModel" not in loaded.error
    assert str(loaded.path).startswith(str(remote_base.RemoteBases().cache_dir))
    assert os.path.isdir(loaded.path)
    assert not first_copy.exists(), "the copy of the earlier upload was left behind"


def test_a_worker_without_the_pushed_folder_fetches_it_from_the_base_path(s3_settings, tmp_path) -> None:
    from include.deploy.published import local_version, publish

    local = _version_folder(tmp_path / "pushed" / "5")
    publish(s3_settings, local, 5)
    fetched = local_version(s3_settings, 5)  # this machine's model_dir has never seen version 5
    assert fetched == s3_settings.model_dir / "5"
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/tf_serving_warmup_requests"):
        assert (fetched / name).read_bytes() == (local / name).read_bytes()
    assert not [p for p in s3_settings.model_dir.iterdir() if p.name.startswith(".")], "staging left behind"
    assert local_version(s3_settings, 5) == fetched  # there already: nothing fetched again
    assert local_version(s3_settings, 6) == s3_settings.model_dir / "6"  # nowhere: left to the caller to refuse


def test_an_unreachable_store_keeps_the_last_listing(s3_settings, s3, monkeypatch) -> None:
    from include.serving import remote_base

    monkeypatch.setattr(remote_base, "POLL_S", 0.0)
    s3.client.put_object(Bucket=BUCKET, Key=f"lake/serving/{MODEL}/9/saved_model.pb", Body=b"graph")
    bases = remote_base.RemoteBases()
    base = f"s3://{BUCKET}/lake/serving/{MODEL}"
    listed = bases.versions(base)
    assert listed[9] > 0

    def unreachable(_: str) -> dict[int, float]:
        raise OSError("connection refused")

    monkeypatch.setattr(remote_base.RemoteBases, "_list", staticmethod(unreachable))
    assert bases.versions(base) == listed
    assert remote_base.RemoteBases().versions(base) == {}  # nothing listed before: nothing to serve
