"""Test session, in tiers.

* The **unit** tier (`make test-fast`: tests/unit and tests/dags) needs no Postgres, no Airflow
  metadata database and no server: configuring the session only sets environment variables.
* The **integration** tier (tests/integration and the attacks of tests/security, marked `integration`
  here, the attacks also `security`; the browser tests also
  `ui`) gets a real Postgres (embedded, or TEST_DATABASE_URL's server), migrated by the same code
  the demo uses, with `feast apply` run on it — by the session fixture `prepared_database`, which
  only integration tests request.

The environment is set before anything imports Airflow, which reads its configuration at import;
so the database URL is decided here (cheaply) and the server is started only when first needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE = "nightshift_test"
EMBEDDED_PG = ROOT / ".local" / "test-pg"
_state: dict[str, object] = {}
# The integration and security tiers' fixtures: one plugin, so a session fixture (the trained model, the
# serving process) is built once for both directories. Nothing in it is autouse.
pytest_plugins = ["tests.server_fixtures", "tests.nights_harness"]


def _server_url() -> str:
    """TEST_DATABASE_URL's server, else the embedded one's socket URL (pgserver puts the socket in its data
    directory when the path is short enough; `prepared_database` checks it did)."""
    return os.environ.get("TEST_DATABASE_URL") or f"postgresql://postgres:@/postgres?host={EMBEDDED_PG}"


def _database_url(server_url: str) -> str:
    from sqlalchemy.engine import make_url

    name = os.environ.get("NIGHTSHIFT_TEST_DATABASE", TEST_DATABASE)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def pytest_configure(config: pytest.Config) -> None:
    from include.core.config import load_settings
    from include.ops.runtime import runtime_env

    work = Path(tempfile.mkdtemp(prefix="nightshift-test-"))
    _state["work"] = work
    url = _database_url(_server_url())
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "NIGHTSHIFT_HOME": str(ROOT),
            "NIGHTSHIFT_LOCAL_DIR": str(work),
            "NIGHTSHIFT_SOURCE": "replay",
            # dag.test() in Airflow 3.3.2 cannot prune a successful run's deadlines (see include/core/config.py).
            "NIGHTSHIFT_DEADLINES": "off",
        }
    )
    settings = load_settings({**os.environ, "NIGHTSHIFT_DATABASE_URL": url})
    os.environ.update(runtime_env(settings, url))
    # One Fernet key for this process and every `airflow …` subprocess: this process imports Airflow before
    # any airflow.cfg exists, and a key generated in memory here would not decrypt the Variables that
    # `airflow variables import` encrypts later with the key of the file it writes.
    from cryptography.fernet import Fernet

    os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration, security = ROOT / "tests" / "integration", ROOT / "tests" / "security"
    for item in items:
        parents = Path(str(item.fspath)).parents
        if integration in parents or security in parents:
            item.add_marker(pytest.mark.integration)
        if security in parents:
            item.add_marker(pytest.mark.security)


def pytest_unconfigure(config: pytest.Config) -> None:
    import sys

    if "airflow.settings" in sys.modules:  # close Airflow's pool before its server goes away
        sys.modules["airflow.settings"].dispose_orm()
    if "embedded" in _state:
        from include.ops.postgres import stop_embedded

        stop_embedded(_state["embedded"])  # type: ignore[arg-type]
    shutil.rmtree(_state["work"], ignore_errors=True)  # type: ignore[arg-type]


def _fresh_database(server_url: str, url: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from include.db import sqlalchemy_url

    name = make_url(url).database
    admin = sa.create_engine(sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def prepared_database() -> str:
    """A fresh test database on a running server, every schema migrated, settings imported, Feast applied."""
    from sqlalchemy.engine import make_url

    from include.core.config import load_settings
    from include.ops.cli import prepare
    from include.ops.postgres import start_embedded

    server = _server_url()
    if not os.environ.get("TEST_DATABASE_URL"):
        started = start_embedded(EMBEDDED_PG)
        _state["embedded"] = EMBEDDED_PG
        if make_url(started).query.get("host") != str(EMBEDDED_PG):
            pytest.exit(f"the embedded Postgres put its socket elsewhere ({started}); set TEST_DATABASE_URL", 2)
    url = os.environ["NIGHTSHIFT_DATABASE_URL"]
    _fresh_database(server, url)
    prepare(load_settings())
    return url


@pytest.fixture(scope="session")
def settings():
    """The session's settings, read once, when a test first asks: before the `serving` fixture has set
    NIGHTSHIFT_SERVING_URL if that test runs first. A test early in the order that does not need serving
    should read `load_settings()` itself (tests/integration/test_celery_workers.py does)."""
    from include.core.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def db_url(prepared_database) -> str:
    return prepared_database


@pytest.fixture(scope="session")
def lake_dir(settings):
    from include.core.lake import lake_root

    return lake_root(settings)
