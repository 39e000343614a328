"""The model registry in Postgres: versions, their lineage, status transitions and gate checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from include.core.errors import PermanentError
from include.db import deployments, engine, gate_checks, model_versions, upsert
from include.train.gate import Check

# THE table of who may do what to a version: status → {status it may become: the step that makes the move}.
# `set_status` enforces it on every write, and `nightshift_deploy`'s plan checks it before serving is touched,
# so a refused move never leaves a label moved (tests/unit/test_transitions.py walks every pair).
# A rollback only returns to a version that served before and was replaced (`archived`); a version that
# was rolled back, or never served, goes through push → infra validation → canary again.
TRANSITIONS: dict[str, dict[str, str]] = {
    "candidate": {
        "blessed": "gate_and_register: every gate check passed",
        "rejected": "gate_and_register: a gate check failed",
    },
    "blessed": {
        "canary": "deploy canary: validated, labelled canary next to stable (or the first deployment)",
        "rejected": "deploy push or infra validation: the SavedModel does not load, crashed, hung or differs",
    },
    "canary": {
        "production": "deploy promote: stable moves to it",
        "rolled_back": "deploy canary judged unhealthy, or a rollback dropped the canary",
        "archived": "serving reset by hand: the canary label is gone",
    },
    "production": {
        "archived": "deploy promote of a newer version: it stays loaded for the grace period",
        "rolled_back": "deploy rollback away from it",
    },
    "archived": {
        "canary": "deploy canary again (push → infra validation → canary)",
        "production": "deploy rollback to it: it served before and was replaced",
        "rejected": "deploy push or infra validation of the redeploy failed",
    },
    "rolled_back": {
        "canary": "deploy canary again (push → infra validation → canary)",
        "rejected": "deploy push or infra validation of the redeploy failed",
    },
    "rejected": {},
}


class TransitionError(PermanentError, ValueError):
    """A status change the lifecycle does not allow (e.g. rejected → production)."""


def may_become(current: str, status: str) -> bool:
    """Whether a version that is `current` may be set to `status` (staying as it is always may)."""
    return current == status or status in TRANSITIONS[current]


def check_transition(version: int, current: str, status: str) -> None:
    """Raise TransitionError, naming what `current` may become instead, unless TRANSITIONS allows the move."""
    if not may_become(current, status):
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (final)"
        raise TransitionError(f"model version {version} is {current}; it cannot become {status} "
                              f"(a {current} version may become: {allowed})")  # fmt: skip


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
    """Move `version` to `status` if TRANSITIONS allows it (row-locked, so two writers cannot both move it)."""
    with engine(url).begin() as conn:
        current = conn.execute(
            sa.select(model_versions.c.status).where(model_versions.c.version == version).with_for_update()
        ).scalar_one_or_none()
        if current is None:
            raise TransitionError(f"model version {version} does not exist")
        check_transition(version, current, status)
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


def version_by_artifact(url: str, artifact_uri: str) -> int | None:
    """The version whose SavedModel is at `artifact_uri` (how a warm start names the champion it started from)."""
    with engine(url).connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(model_versions.c.version)).where(model_versions.c.artifact_uri == artifact_uri)
        ).scalar()


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
