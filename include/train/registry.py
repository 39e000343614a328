"""The model registry in Postgres: versions, their lineage, status transitions and gate checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from include.db import deployments, engine, gate_checks, model_versions, upsert
from include.train.gate import Check

# Which status may follow which. Training sets the first half; deployment the serving half
# (a version failing infra validation or its canary is rejected / rolled back with the reason).
TRANSITIONS: dict[str, set[str]] = {
    "candidate": {"blessed", "rejected"},
    "blessed": {"canary", "production", "archived", "rejected"},
    "rejected": set(),
    "canary": {"production", "rolled_back", "archived"},
    "production": {"archived", "rolled_back"},
    "rolled_back": {"canary", "production", "archived", "rejected"},
    "archived": {"canary", "production", "rejected"},
}


class TransitionError(ValueError):
    """A status change the lifecycle does not allow (e.g. rejected → production)."""


def register_candidate(url: str, record: dict[str, Any], at: dt.datetime) -> int:
    """Insert a candidate version for `record['run_id']`, or return the one a retry already made."""
    row = {**record, "status": "candidate", "created_at": at, "updated_at": at}
    with engine(url).begin() as conn:
        stmt = insert(model_versions).values(row).on_conflict_do_nothing(index_elements=["run_id"])
        conn.execute(stmt)
        return conn.execute(
            sa.select(model_versions.c.version).where(model_versions.c.run_id == record["run_id"])
        ).scalar_one()


def set_status(url: str, version: int, status: str, at: dt.datetime, note: str | None = None) -> None:
    with engine(url).begin() as conn:
        current = conn.execute(
            sa.select(model_versions.c.status).where(model_versions.c.version == version).with_for_update()
        ).scalar_one_or_none()
        if current is None:
            raise TransitionError(f"model version {version} does not exist")
        if current != status and status not in TRANSITIONS[current]:
            raise TransitionError(f"version {version} is {current}; it cannot become {status}")
        values: dict[str, Any] = {"status": status, "updated_at": at}
        if note is not None:
            values["gate_note"] = note
        conn.execute(sa.update(model_versions).where(model_versions.c.version == version).values(**values))


def set_report_uri(url: str, version: int, uri: str) -> None:
    with engine(url).begin() as conn:
        conn.execute(sa.update(model_versions).where(model_versions.c.version == version).values(report_uri=uri))


def record_checks(url: str, version: int, checks: list[Check]) -> None:
    with engine(url).begin() as conn:
        conn.execute(sa.delete(gate_checks).where(gate_checks.c.version == version))
        upsert(conn, gate_checks, [{"version": version, **asdict(c)} for c in checks])


def production_version(url: str) -> dict[str, Any] | None:
    """The version serving as `stable` now, if any (the champion)."""
    with engine(url).connect() as conn:
        row = conn.execute(
            sa.select(model_versions).where(model_versions.c.status == "production")
            .order_by(model_versions.c.updated_at.desc()).limit(1)
        ).mappings().first()  # fmt: skip
    return dict(row) if row else None


def get_version(url: str, version: int) -> dict[str, Any]:
    with engine(url).connect() as conn:
        return dict(conn.execute(sa.select(model_versions).where(model_versions.c.version == version)).mappings().one())


def record_deployment(url: str, row: dict[str, Any]) -> int:
    """Append one serving state change; returns its id."""
    row = {"detail": {}, **row}
    with engine(url).begin() as conn:
        return conn.execute(sa.insert(deployments).values(row).returning(deployments.c.id)).scalar_one()


def latest_blessed(url: str) -> int | None:
    with engine(url).connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(model_versions.c.version)).where(model_versions.c.status == "blessed")
        ).scalar()
