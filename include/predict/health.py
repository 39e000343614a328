"""Serving health, checked every 5 minutes (`nightshift_serving_health`): what on-call would otherwise learn
only when the next monitor run fails.

Each check probes TF Serving's model status for `stable` and reads the prediction service's served log of the
last `window_s`: per arm and version, flights, errors and the p50/p99 latency of its serving calls, written
to `serving_health`. Serving down (the probe fails, or `stable` is not AVAILABLE), or an arm's error rate
over the limit, opens an incident with one critical alert; the check that finds it over closes the incident
and notes the recovery on that alert. At most one incident of a kind is open (a unique index), so a retried
or repeated check never alerts twice for one spell.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from include.core.alerts import Alert, send
from include.core.assets import SERVING_HEALTH_DAG as HEALTH_DAG
from include.core.config import ServingHealth, Settings
from include.db import alerts, engine, serving_health, serving_incidents, upsert

log = logging.getLogger(__name__)


def probe(settings: Settings, policy: ServingHealth) -> tuple[int | None, str]:
    """`stable`'s version and state on the server, or (None, why it could not say). With several replicas,
    the state is AVAILABLE only when every one serves `stable` at the same version; else it names the
    replicas that do not."""
    from include.serving.client import ServingClient, ServingError

    seen: dict[str, tuple[int | None, str]] = {}
    with ServingClient(settings.replica_urls, settings.model_name, timeout=policy.probe_timeout_s,
                       retries=1, backoff=1.0) as client:  # fmt: skip
        for replica in client.replicas():
            try:
                status = replica.status(label="stable")[0]
            except ServingError as err:
                seen[replica.base_url] = (None, f"unreachable or refusing: {err}"[:300])
            else:
                seen[replica.base_url] = (int(status["version"]), str(status["state"]))
    if len(seen) == 1:
        return next(iter(seen.values()))
    versions = {v for v, state in seen.values() if state == "AVAILABLE"}
    known = [v for v, _ in seen.values() if v is not None]
    if len(versions) == 1 and all(state == "AVAILABLE" for _, state in seen.values()):
        return versions.pop(), "AVAILABLE"
    return (max(known) if known else None), "; ".join(f"replica {url}: v{v} {state}" for url, (v, state)
                                                       in seen.items())[:300]  # fmt: skip


def arm_stats(served: Any) -> list[dict[str, Any]]:
    """Per arm and version of the served rows: flights, errors, p50/p99 of the serving calls."""
    if served is None or served.empty:
        return []
    stats = []
    for (arm, version), rows in served.groupby(["arm", "model_version"]):
        calls = rows[rows["error"].isna()].drop_duplicates("request_id")["serving_ms"].astype(float)
        stats.append({
            "arm": str(arm), "model_version": int(version), "requests": len(rows),
            "errors": int(rows["error"].notna().sum()),
            "p50_ms": float(np.percentile(calls, 50)) if len(calls) else None,
            "p99_ms": float(np.percentile(calls, 99)) if len(calls) else None,
        })  # fmt: skip
    return stats


def check(settings: Settings, policy: ServingHealth, run_id: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """One health check: record it, open or close incidents; returns what it saw."""
    from include.predict.served import served_frame

    now = now or dt.datetime.now(dt.UTC)
    url = settings.require_database_url()
    version, state = probe(settings, policy)
    arms = arm_stats(served_frame(settings, since=now - dt.timedelta(seconds=policy.window_s)))
    rows = [{"checked_at": now, "arm": "probe", "model_version": version, "requests": 0, "errors": 0,
             "p50_ms": None, "p99_ms": None, "state": state, "run_id": run_id}]  # fmt: skip
    rows += [{**a, "checked_at": now, "state": "served", "run_id": run_id} for a in arms]
    with engine(url).begin() as conn:
        upsert(conn, serving_health, rows)
    erring = [a for a in arms if a["requests"] >= policy.min_requests and a["errors"] / a["requests"] >
              policy.max_error_rate]  # fmt: skip
    failing = "; ".join(f"{a['arm']} v{a['model_version']}: {a['errors']} of {a['requests']} flights failed"
                        for a in erring)  # fmt: skip
    problems = {
        "serving_down": None if state == "AVAILABLE" else f"stable on {', '.join(settings.replica_urls)}: {state}",
        "serving_errors": failing or None,
    }
    opened, closed = [], []
    for kind, problem in problems.items():
        if problem is not None:
            if _open(settings, kind, problem, now, run_id):
                opened.append(kind)
        elif _close(url, kind, now):
            closed.append(kind)
    log.info("serving health: stable v%s %s; %s; opened %s, closed %s", version, state,
             ", ".join(f"{a['arm']} v{a['model_version']} {a['requests']} flights {a['errors']} errors" for a in arms)
             or "no served traffic", opened or "none", closed or "none")  # fmt: skip
    return {"checked_at": now.isoformat(), "stable": version, "state": state, "arms": arms, "opened": opened,
            "closed": closed}  # fmt: skip


def _open(settings: Settings, kind: str, problem: str, now: dt.datetime, run_id: str) -> bool:
    """Open the kind's incident and alert for it, unless one is open; True when this check opened it. An
    incident a failed check opened without its alert gets the alert now (same key: the outbox sends it once)."""
    url = settings.require_database_url()
    i = serving_incidents
    with engine(url).begin() as conn:
        created = conn.execute(insert(i).values(kind=kind, started_at=now, detail=problem).on_conflict_do_nothing(
            index_elements=["kind"], index_where=i.c.recovered_at.is_(None)).returning(i.c.id)).scalar()  # fmt: skip
        incident = conn.execute(sa.select(i).where(i.c.kind == kind, i.c.recovered_at.is_(None))).mappings().one()
    if incident["alert_id"] is not None:
        return False
    down = kind == "serving_down"
    alert_id = send(url, Alert(
        kind=kind, key=f"{settings.model_name}:{incident['started_at']:%Y%m%dT%H%M%S}", severity="critical",
        title=(f"Serving is down: {settings.model_name} does not answer" if down
               else f"Serving errors: {settings.model_name} fails callers"),
        impact="callers of the prediction service get no predictions" if down else
               "a share of the prediction service's flights get no prediction from their arm",
        details=[incident["detail"]],
        next_step="check the serving process (make airflow supervises the local one) and models.config" if down
                  else "check the version that fails (ML Ops → Predictions); roll it back from the deploy form",
        dag_id=HEALTH_DAG, task_id="check", run_id=run_id,
    ), at=now)  # fmt: skip
    if alert_id is not None:
        with engine(url).begin() as conn:
            conn.execute(sa.update(i).where(i.c.id == incident["id"]).values(alert_id=alert_id))
    return created is not None


def _close(url: str, kind: str, now: dt.datetime) -> bool:
    """Close the kind's open incident, noting the recovery on its alert; False when none was open."""
    i = serving_incidents
    with engine(url).begin() as conn:
        incident = conn.execute(sa.update(i).where(i.c.kind == kind, i.c.recovered_at.is_(None))
                                .values(recovered_at=now).returning(i.c.alert_id, i.c.started_at)).first()  # fmt: skip
        if incident is None:
            return False
        if incident.alert_id is not None:
            minutes = (now - incident.started_at).total_seconds() / 60
            note = f"\n\nRecovered at {now:%Y-%m-%d %H:%M} UTC, after {minutes:.0f} min."
            conn.execute(sa.update(alerts).where(alerts.c.id == incident.alert_id)
                         .values(message=alerts.c.message + note))  # fmt: skip
    return True
