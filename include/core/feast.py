"""Feast bound to nightshift's one Postgres: the `feature_repo/` store, its `${VAR}`s filled from settings.

Ingestion materializes through it; training and monitoring read point-in-time features through it.
"""

from __future__ import annotations

import string
import threading
from typing import TYPE_CHECKING

from include.db import libpq_host

if TYPE_CHECKING:
    from feast import FeatureStore

    from include.core.config import Settings

# Schema of Feast's SQL registry; the online store's is set in feature_repo/feature_store.yaml.
FEAST_REGISTRY_SCHEMA = "feast_registry"
REDIS_TIMEOUT_S = 5
_REGISTERING = threading.Lock()


def feast_variables(database_url: str) -> dict[str, str]:
    """The `${VAR}`s of `feature_repo/feature_store.yaml`, derived from the one database URL."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    host, port = libpq_host(database_url)
    query = {k: v for k, v in url.query.items() if k != "host"}
    registry = url.set(drivername="postgresql+psycopg", query={
        **query, **({"host": host} if host.startswith("/") else {}),
        "options": f"-csearch_path={FEAST_REGISTRY_SCHEMA}",
    })  # fmt: skip
    return {
        "FEAST_REGISTRY_URL": registry.render_as_string(hide_password=False),
        "FEAST_PG_HOST": host,
        "FEAST_PG_PORT": str(port),
        "FEAST_PG_DATABASE": url.database or "postgres",
        "FEAST_PG_USER": url.username or "postgres",
        "FEAST_PG_PASSWORD": url.password or "",
    }


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on `feature_repo/`, its yaml filled from settings (not from os.environ); the online store
    is the yaml's Postgres one, or Redis when `settings.online_store` says so."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    text = (settings.feast_repo / "feature_store.yaml").read_text()
    filled = yaml.safe_load(string.Template(text).substitute(feast_variables(settings.require_database_url())))
    if settings.online_store == "redis":
        # Redis at scale (NIGHTSHIFT_ONLINE_STORE=redis): every call gives up after REDIS_TIMEOUT_S.
        filled["online_store"] = {"type": "redis", "connection_string": f"{settings.redis_address},socket_timeout="
                                  f"{REDIS_TIMEOUT_S},socket_connect_timeout={REDIS_TIMEOUT_S}"}  # fmt: skip
    config = RepoConfig(**filled)
    config.repo_path = settings.feast_repo
    if settings.lake_uri.startswith("s3://"):
        duckdb_reads_lake(settings)
    return FeatureStore(config=config)


def duckdb_reads_lake(settings: Settings) -> None:
    """Let the DuckDB connection Feast's offline store queries (ibis's default one) read an `s3://` lake.

    DuckDB gets the lake's own fsspec filesystem: s3fs, with the credentials and endpoint of the lake's
    Airflow connection. Nothing is downloaded (DuckDB's httpfs extension would be), and the feature
    sources, named `s3a://` (`Settings.feature_source_glob`), reach this filesystem and no other.
    The filesystem registered last wins, so settings that name another connection take over.
    """
    import ibis

    from include.core.lake import lake_root

    filesystem = lake_root(settings).fs
    connection = ibis.get_backend().con
    with _REGISTERING:  # stores opened in several threads of one process
        if "s3" in connection.list_filesystems():
            connection.unregister_filesystem("s3")
        connection.register_filesystem(filesystem)
