"""Every integration test runs on the prepared Postgres (started, migrated and Feast-applied once), with the
alert receivers wired in as Airflow connections. The fixtures live in tests/server_fixtures.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _database(prepared_database, alert_receivers) -> str:
    return prepared_database
