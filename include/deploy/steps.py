"""The steps of `nightshift_deploy`: push, infra validation, canary, promotion, rollback, retirement.

Serving's state is `models.config` (which versions are loaded, where `stable` and `canary` point);
every change to it is made under a Postgres advisory lock held for the model, checked against the
state the step expected, recorded in the `deployments` table and mirrored in the registry's
status. The pipeline only ever talks to the server through `ServingClient`, so the same steps
drive the real TF Serving and the local one.

Order of a deploy, after TFX's InfraValidator and a plain canary:

0. **plan**: the registry decides. The version's status must allow the move (`registry.TRANSITIONS`):
   canary/promote need a status that may become `canary`, a rollback one that may become
   `production`. A refusal is permanent and comes before anything touches serving.
1. **push**: stage the blessed SavedModel next to the version folders, check its files are the
   bytes the gate fingerprinted, that it loads and has the expected signature (without calling
   it), add warmup records built from real recent rows, then rename it to `<model>/<version>/`
   (atomic; an existing version folder is never overwritten, and is checked against the hash).
2. **infra validation**: first in a sandbox, a local server of its own holding only this version
   (`include.deploy.sandbox`): AVAILABLE, signature, answers on real rows, the same predictions as
   offline. A candidate that crashes or hangs it is rejected there. Only then production's server
   loads it (no label moves) and the same checks run there. A failure unloads it, leaves the labels
   untouched and rejects the version with the reason.
3. **canary**: `canary` → the version; the same requests go to canary and stable, interleaved, and
   latency (p50, p90), error rate and the mean prediction shift are compared with the policy.
4. **promote**: `stable` → the version; the old one stays loaded for the grace period.
5. **rollback**: `stable` → the previous production version in one step (loading it first when
   the grace period has already retired it).

Canary, promote and rollback reconcile, so Airflow's retry after a failure at any point (Postgres
gone, the worker killed) converges: each reads the labels, the registry and this run's `deployments`
rows, and does only what is missing. Moving `stable` is a promotion's or rollback's commit point: a
retry that finds it moved completes the registry and the record. A canary that fails before its
verdict is recorded takes its label away again (or its retry does), so no canary is left live
unjudged. A success row is written once per run, action and version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa

from include.core import lake
from include.core.alerts import Alert, send
from include.core.assets import DEPLOY_DAG
from include.core.config import DeployPolicy, Settings
from include.core.faults import PROMOTE_LABEL_MOVED, failpoint
from include.db import engine
from include.deploy.canary import MIN_CANARY_REQUESTS, compare, live_compare
from include.deploy.errors import DeployConflict, DeployError, SandboxRejected, StatusRefused
from include.deploy.published import local_version, publish
from include.deploy.savedmodel import (
    EXPECTED_DTYPES,
    check_loads,
    offline_predictions,
    require_blessed_bytes,
    sample_rows,
    signature_diff,
    write_warmup,
)
from include.serving.client import ServingClient, ServingError, client_for
from include.serving.state import ServingState, read_state, rollback_target, write_state
from include.train.model_card import write_model_card

log = logging.getLogger(__name__)

ACTIONS = ("canary", "promote", "rollback")
# The status each action first moves its version to, checked against registry.TRANSITIONS by plan.
ENTRY_STATUS = {"canary": "canary", "promote": "canary", "rollback": "production"}


@contextlib.contextmanager
def serving_lock(settings: Settings, timeout_s: float) -> Iterator[None]:
    """One deploy at a time per model: a session-level Postgres advisory lock, waited on for `timeout_s`."""
    key = zlib.crc32(f"nightshift-serving:{settings.model_name}".encode())
    with engine(settings.require_database_url()).connect() as conn:
        deadline = time.monotonic() + timeout_s
        while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            if time.monotonic() > deadline:
                raise DeployConflict(
                    f"another deploy of {settings.model_name} has held the serving lock for over {timeout_s:.0f} s; "
                    "retry when it has finished (see the deployments table)"
                )
            time.sleep(0.5)
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def _expect(state: ServingState, expected_labels: dict[str, int] | None) -> None:
    if expected_labels is not None and state.labels != expected_labels:
        raise DeployConflict(
            f"serving labels changed while this deploy waited: expected {expected_labels}, found {state.labels}; "
            "re-run the deploy against the current state"
        )


def wait_available(client: ServingClient, version: int, timeout_s: float) -> None:
    """Poll the version's status on every replica until each says AVAILABLE. An unreachable replica fails
    after the client's retries: a deploy is not done until every replica serves the version."""
    deadline = time.monotonic() + timeout_s
    for replica in client.replicas():
        _wait_available_on(replica, version, deadline, timeout_s, len(client.base_urls) > 1)


def _wait_available_on(client: ServingClient, version: int, deadline: float, timeout_s: float, name: bool) -> None:
    where = f" on replica {client.base_url}" if name else ""
    last = "not loaded yet"
    while time.monotonic() < deadline:
        try:
            states = client.status(version=version)
        except ServingError as err:
            if err.status is None or err.status >= 500:
                raise ServingError(f"{err}{where}", err.status) from err
            last = str(err)
        else:
            if any(s["state"] == "AVAILABLE" for s in states):
                return
            errors = [s["status"].get("error_message") for s in states if s["state"] == "END"]
            if any(errors):
                raise DeployError(f"version {version} failed to load{where}: {errors[0]}")
            last = ", ".join(s["state"] for s in states)
        time.sleep(0.5)
    raise DeployError(f"version {version} did not become AVAILABLE{where} within {timeout_s:.0f} s ({last})")


# -- requests from real rows ---------------------------------------------------------------------


# -- recording -----------------------------------------------------------------------------------


def _record(settings: Settings, run_id: str, version: int, action: str, succeeded: bool, reason: str,
            state: ServingState, previous: int | None = None, detail: dict | None = None) -> bool:  # fmt: skip
    """Append a step's outcome to `deployments`; a success is written once per run, action and version, so a
    retry that reconciles a step already done records nothing new. Returns whether a row was written."""
    from include.train.registry import record_deployment

    if succeeded and _succeeded(settings, run_id, action, version) is not None:
        return False
    record_deployment(settings.require_database_url(), {
        "model": settings.model_name, "version": version, "action": action, "succeeded": succeeded,
        "stable_version": state.stable, "canary_version": state.canary, "previous_stable_version": previous,
        "reason": reason, "detail": json.loads(json.dumps(detail or {}, default=str)),
        "dag_id": DEPLOY_DAG, "run_id": run_id, "created_at": now(),
    })  # fmt: skip
    return True


def _succeeded(settings: Settings, run_id: str, action: str, version: int) -> dict[str, Any] | None:
    """This run's success row for `action` of `version`, if an earlier try of the step wrote one.

    Callers hold the serving lock, so no other deploy writes one between this read and their insert.
    """
    from include.db import deployments as d

    with engine(settings.require_database_url()).connect() as conn:
        row = conn.execute(
            sa.select(d).where(d.c.model == settings.model_name, d.c.run_id == run_id, d.c.action == action,
                               d.c.version == version, d.c.succeeded).order_by(d.c.id).limit(1)
        ).mappings().first()  # fmt: skip
    return dict(row) if row else None


def _status(settings: Settings, version: int) -> str:
    from include.train.registry import get_version

    return str(get_version(settings.require_database_url(), version)["status"])


def _ensure_status(settings: Settings, version: int, status: str, note: str | None = None) -> None:
    """Move `version` to `status` unless it is there already (a retry redoing a move the last try made)."""
    if _status(settings, version) != status:
        _set_status(settings, version, status, note)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _set_status(settings: Settings, version: int, status: str, note: str | None = None) -> None:
    from include.train.registry import set_status

    set_status(settings.require_database_url(), version, status, now(), note)


def _fail(settings: Settings, run_id: str, version: int, action: str, reason: str, state: ServingState,
          reject: str | None = None, detail: dict[str, Any] | None = None) -> DeployError:  # fmt: skip
    """Record a failed step (and the version's new status), return the error to raise."""
    from include.train.registry import get_version, may_become

    _record(settings, run_id, version, action, False, reason, state, detail=detail)
    if reject and not may_become(get_version(settings.require_database_url(), version)["status"], reject):
        reject = None  # e.g. a labelled canary re-validated: its status stays, the failure is recorded
    if reject:
        _set_status(settings, version, reject, f"{action} failed: {reason}")
    log.error("%s of version %d failed: %s", action, version, reason)
    _alert(settings, run_id, action, version, Alert(
        kind="deploy_failed", key=f"{settings.model_name}:{version}:{action}", severity="critical",
        title=f"Deploy of {settings.model_name} version {version} failed at {action.replace('_', ' ')}",
        impact=f"version {version} does not serve; stable stays on version {state.stable}, untouched"
        + (f"; the version is now {reject}" if reject else ""),
        details=[reason], next_step="read the reason; a model problem needs a new training run, a serving "
        "problem (unreachable, slow) needs the server fixed, then re-run nightshift_deploy from the form",
    ))  # fmt: skip
    return DeployError(f"{action} of {settings.model_name} version {version} failed: {reason}")


TASK_OF_ACTION = {"infra_validation": "infra_validate"}


def _alert(settings: Settings, run_id: str, action: str, version: int, alert: Alert) -> None:
    from include.train.registry import get_version

    report = get_version(settings.require_database_url(), version).get("report_uri")
    send(settings.require_database_url(), dataclasses.replace(
        alert, link=report, dag_id=DEPLOY_DAG, task_id=TASK_OF_ACTION.get(action, action), run_id=run_id))  # fmt: skip


# -- the steps -----------------------------------------------------------------------------------


def require_status(settings: Settings, version: int, action: str, becomes: str | None = None) -> dict[str, Any]:
    """The version's registry row, if its status may become `becomes` (default: the action's entry status)
    under registry.TRANSITIONS; else StatusRefused, naming what the status does allow."""
    from include.train.registry import get_version, may_become

    try:
        row = get_version(settings.require_database_url(), int(version))
    except sa.exc.NoResultFound:
        raise StatusRefused(f"model version {version} is not in the registry") from None
    status, becomes = row["status"], becomes or ENTRY_STATUS[action]
    if not may_become(status, becomes):
        allowed = sorted(a for a, first in ENTRY_STATUS.items() if may_become(status, first))
        raise StatusRefused(
            f"{action} of {settings.model_name} version {version} refused: model version {version} is {status} "
            f"({row['gate_note'] or 'no note'}), and a {status} version cannot become {becomes}; deploy actions "
            f"it allows: {', '.join(allowed) or 'none'} (include/train/registry.py TRANSITIONS)"
        )
    return row


def plan(settings: Settings, params: dict[str, Any], event_versions: list[int]) -> dict[str, Any]:
    """Which version and action this run is about (the form's, else the triggering candidate's), refused
    before anything touches serving unless the registry's status of every version it moves allows it."""
    from include.train.registry import latest_blessed

    url = settings.require_database_url()
    action = params.get("action") or "promote"
    if action not in ACTIONS:
        raise DeployError(f"action {action!r}: choose one of {', '.join(ACTIONS)}")
    state = read_state(settings)
    version = params.get("version") or (max(event_versions) if event_versions else None)
    if action == "rollback":
        if state.stable is None:
            raise DeployError("nothing to roll back: no version is labelled stable")
        target = version or rollback_target(url, settings.model_name, state.stable)
        if target is not None and int(target) != state.stable:
            require_status(settings, int(target), action)
            require_status(settings, state.stable, action, becomes="rolled_back")
        return {"action": action, "version": version, "stable": state.stable, "labels": state.labels}
    version = version or latest_blessed(url)
    if version is None:
        raise DeployError("no version given and no blessed version in the registry; train one first")
    row = require_status(settings, int(version), action)
    percent = params.get("canary_percent")
    if percent is not None and not 0 <= float(percent) <= 100:
        raise DeployError(f"canary_percent {percent}: give a share between 0 and 100")
    return {"action": action, "version": int(version), "stable": state.stable, "labels": state.labels,
            "artifact_uri": row["artifact_uri"], "dataset_uri": row["dataset_uri"],
            "canary_percent": None if percent is None else float(percent)}  # fmt: skip


def push(settings: Settings, policy: DeployPolicy, plan: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Copy the SavedModel into `<model>/<version>/` atomically, if its files are the bytes the gate blessed,
    with warmup records and the real rows infra validation will replay. The model is never called here."""
    from include.train.registry import get_version

    version = plan["version"]
    recorded = get_version(settings.require_database_url(), version)["artifact_sha256"]  # the registry's word
    target = settings.model_dir / str(version)
    requests_uri = lake.lake_root(settings) / "deployments" / settings.model_name / str(version) / "requests.json"
    if target.exists():
        if (target / "saved_model.pb").exists() and requests_uri.exists():
            try:
                require_blessed_bytes(target, version, recorded, served=True)
            except DeployError as err:
                raise _fail(settings, run_id, version, "push", str(err), read_state(settings)) from err
            log.info("version %d is already pushed to %s; a version folder is never overwritten", version, target)
            return {"version": version, "path": publish(settings, target, version) or str(target),
                    "requests": lake.uri(requests_uri), "pushed": False}  # fmt: skip
        raise _fail(settings, run_id, version, "push", f"{target} exists but is not a pushed version; it is never "
                    "overwritten: move it aside by hand", read_state(settings))  # fmt: skip
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    stage = settings.model_dir / f".staging-{version}-{uuid.uuid4().hex[:8]}"  # not numeric: servers skip it
    try:
        lake.copy_tree(lake.at(settings, plan["artifact_uri"]), stage)
        try:
            digest = require_blessed_bytes(stage, version, recorded)  # the copy, so no swap after the check
        except DeployError as err:  # the files changed, not the model: its status stays
            raise _fail(settings, run_id, version, "push", str(err), read_state(settings)) from err
        try:
            check_loads(stage)
        except DeployError as err:
            raise _fail(settings, run_id, version, "push", str(err), read_state(settings), reject="rejected") from err
        rows = sample_rows(settings, plan["dataset_uri"], policy.infra_requests)
        warmups = write_warmup(stage, settings.model_name, rows, policy.warmup_records)
        lake.write_atomic(requests_uri, json.dumps({"rows": rows}).encode())
        stage.rename(target)  # the last step: the version folder appears complete or not at all
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    where = publish(settings, target, version) or str(target)  # and onto a remote base path, saved_model.pb last
    _record(settings, run_id, version, "push", True, f"pushed to {where}", read_state(settings),
            detail={"warmup_records": warmups, "requests": len(rows), "sha256": digest})  # fmt: skip
    return {"version": version, "path": where, "requests": lake.uri(requests_uri), "pushed": True,
            "warmup_records": warmups}  # fmt: skip


def _load_requests(settings: Settings, uri: str) -> dict[str, Any]:
    return json.loads(lake.at(settings, uri).read_text())


def infra_validate(settings: Settings, policy: DeployPolicy, plan: dict[str, Any], pushed: dict[str, Any],
                   run_id: str) -> dict[str, Any]:  # fmt: skip
    """In a sandbox server first, then in production's without moving a label: status, signature and
    predictions on real rows equal to the offline ones. Production's server never loads a version the
    sandbox has not run; a failure in either leaves the labels untouched and rejects the version."""
    from include.deploy.sandbox import validate_in_sandbox
    from include.serving.process import SandboxUnavailable

    version = plan["version"]
    rows = _load_requests(settings, pushed["requests"])["rows"]
    _expect(read_state(settings), plan["labels"])  # cheap, before a sandbox starts; checked again under the lock
    local_version(settings, version)  # pushed by another worker to a remote base path: fetched here
    checks: dict[str, Any] = {}
    try:
        sandbox = validate_in_sandbox(settings, policy, version, rows)
        # In-process only now: the sandbox has just run the model on these very rows without crashing or hanging.
        expected = np.array(offline_predictions(settings.model_dir / str(version), rows))
        diff = float(np.max(np.abs(np.array(sandbox.pop("predictions")) - expected)))
        checks["sandbox"] = sandbox | {"max_abs_diff": diff}
        if not diff <= policy.infra_tolerance:
            raise SandboxRejected(
                f"version {version} in the infra validation sandbox: predictions differ from offline ones by "
                f"{diff:.2e} > {policy.infra_tolerance:.0e} on {len(rows)} rows"
            )
    except (DeployError, SandboxUnavailable) as err:
        if log_tail := getattr(err, "log_tail", ""):
            checks["sandbox_log"] = log_tail
        raise _fail(settings, run_id, version, "infra_validation", str(err), read_state(settings),
                    reject="rejected" if isinstance(err, DeployError) else None, detail=checks) from err  # fmt: skip
    with client_for(settings) as client, serving_lock(settings, policy.lock_timeout_s):
        state = read_state(settings)
        _expect(state, plan["labels"])
        added = version not in state.versions
        if added:
            write_state(settings, ServingState([*state.versions, version], state.labels))  # step 1: load only
        try:
            wait_available(client, version, policy.load_timeout_s)
            checks["available"] = True
            checks |= {"replicas": len(client.base_urls), "tolerance": policy.infra_tolerance}
            for replica in client.replicas():  # each replica loaded its own copy: each is checked
                where = f" on replica {replica.base_url}" if len(client.base_urls) > 1 else ""
                signature = replica.signature_inputs(version=version)
                if signature != EXPECTED_DTYPES:
                    raise DeployError(f"served signature differs{where}: {signature_diff(signature)}")
                checks["signature"] = True
                served = np.array(replica.predict_rows(rows, version=version), dtype=float).reshape(-1)
                diff = float(np.max(np.abs(served - expected)))
                checks |= {"requests": len(served), "max_abs_diff": max(diff, checks.get("max_abs_diff", 0.0))}
                if not diff <= policy.infra_tolerance:
                    raise DeployError(f"served predictions differ from offline ones by {diff:.2e} > "
                                      f"{policy.infra_tolerance:.0e} on {len(served)} real rows{where}")  # fmt: skip
        except (DeployError, ServingError) as err:
            if added:
                write_state(settings, state)  # unload it again; labels were never touched
            raise _fail(
                settings,
                run_id,
                version,
                "infra_validation",
                str(err),
                state,
                reject="rejected" if isinstance(err, DeployError) else None,
                detail=checks,
            ) from err
        # The share the prediction service gives the canary once it is labelled, known before the label moves.
        checks["canary_percent"] = canary_share(plan, policy)
        _record(settings, run_id, version, "infra_validation", True, "sandbox, then serving: AVAILABLE, signature "
                "and predictions match", read_state(settings), detail=checks)  # fmt: skip
    return {"version": version, **checks}


def canary_share(plan: dict[str, Any], policy: DeployPolicy) -> float:
    """The share of the prediction service's flights the canary gets: the form's, else the policy's. Recorded
    with infra validation and the canary's verdict, where include/predict/routing.py reads it."""
    percent = plan.get("canary_percent")
    return float(policy.canary_percent if percent is None else percent)


def _own_canary_left(state: ServingState, expected: dict[str, int] | None, version: int) -> bool:
    """Whether the labels are the expected ones plus `canary` → `version`: what an earlier try of this
    run's canary left when it died after moving the label and before recording its verdict."""
    return expected is not None and state.labels != expected and state.labels == {**expected, "canary": version}


def canary(settings: Settings, policy: DeployPolicy, plan: dict[str, Any], pushed: dict[str, Any],
           run_id: str) -> dict[str, Any]:  # fmt: skip
    """Point `canary` at the validated version and compare it with `stable` on the same requests.

    Reconciles: a try that finds this run's verdict recorded only makes the registry agree; one that
    finds the canary label an earlier try left (it died before its verdict) takes it away and judges
    again. A try that fails after moving the label puts the labels back before it leaves.
    """
    version = plan["version"]
    percent = canary_share(plan, policy)
    if policy.canary_requests < MIN_CANARY_REQUESTS:  # refused before any label moves
        reason = (f"NIGHTSHIFT_DEPLOY_CANARY_REQUESTS={policy.canary_requests} is too few for a latency verdict; "
                  f"set at least {MIN_CANARY_REQUESTS}")  # fmt: skip
        raise _fail(settings, run_id, version, "canary", reason, read_state(settings))
    rows = (_load_requests(settings, pushed["requests"])["rows"] * policy.canary_requests)[: policy.canary_requests]
    with client_for(settings) as client, serving_lock(settings, policy.lock_timeout_s):
        state = read_state(settings)
        done = _succeeded(settings, run_id, "canary", version)
        if done is not None and state.canary == version:  # judged and recorded; the try died after that
            _ensure_status(settings, version, "canary")
            return {"version": version, "labels": state.labels, **done["detail"]}
        if _own_canary_left(state, plan["labels"], version):
            log.warning("removing the canary label an earlier try of run %s left on version %d", run_id, version)
            state = ServingState(state.versions, dict(plan["labels"]))
            write_state(settings, state)
        _expect(state, plan["labels"])
        if version not in state.versions:
            raise DeployError(f"version {version} is not loaded; infra validation must run first")
        if state.stable == version:
            return {"version": version, "skipped": "already stable"}
        require_status(settings, version, "canary")  # again under the lock: the status may have moved since plan
        labelled = ServingState(state.versions, {**state.labels, "canary": version})
        write_state(settings, labelled)  # step 2: the label moves to an AVAILABLE version
        try:
            try:
                wait_label(client, "canary", version, policy.load_timeout_s)
                result = _judge_canary(settings, policy, client, rows, version, state.stable)
                result["canary_percent"] = percent
            except (DeployError, ServingError) as err:
                write_state(settings, state)
                raise _fail(settings, run_id, version, "canary", str(err), state) from err
            if result.get("problems"):  # the canary label goes first, the version is unloaded once judged
                unlabelled = ServingState(state.versions, {k: v for k, v in state.labels.items() if k != "canary"})
                write_state(settings, unlabelled)
                _ensure_status(settings, version, "canary")
                restored = ServingState([v for v in state.versions if v != version], unlabelled.labels)
                err = _fail(settings, run_id, version, "canary", "; ".join(result["problems"]), restored,
                            reject="rolled_back", detail=result)  # fmt: skip
                write_state(settings, restored)
                raise err
            _ensure_status(settings, version, "canary")
            _record(settings, run_id, version, "canary", True,
                    "first deployment: no stable to compare with" if state.stable is None else "canary healthy",
                    labelled, detail=result)  # fmt: skip
        except BaseException:
            # Whatever failed (Postgres, a kill signal turned into an exception), no canary label is left live
            # without its verdict recorded: the labels go back to what they were before this try.
            current = read_state(settings)
            if current.canary == version and _succeeded_or_none(settings, run_id, version) is None:
                write_state(settings, ServingState(current.versions, state.labels))
            raise
    return {"version": version, "labels": labelled.labels, **result}


def _judge_canary(settings: Settings, policy: DeployPolicy, client: ServingClient, rows: list[dict[str, Any]],
                  version: int, stable: int | None) -> dict[str, Any]:  # fmt: skip
    """On live traffic after `canary_bake_s` of it, when the prediction service sent enough; else on the
    replayed requests (the first deployment has no stable to compare with)."""
    if stable is None:
        return {"first_deployment": True}
    if policy.canary_bake_s > 0:
        from include.predict.served import served_frame

        since = dt.datetime.now(dt.UTC)
        log.info("canary v%d serves live traffic for %.0f s before its verdict", version, policy.canary_bake_s)
        time.sleep(policy.canary_bake_s)
        live = live_compare(served_frame(settings, since=since), version, stable, policy)
        if live is not None:
            return live
        log.info("too little live traffic for the canary (under %d flights an arm): judged on replayed requests",
                 policy.canary_min_live)  # fmt: skip
    return compare(client, rows, policy)


def _succeeded_or_none(settings: Settings, run_id: str, version: int) -> dict[str, Any] | None:
    """This run's canary success row, or None also when Postgres cannot say (then it was not written)."""
    try:
        return _succeeded(settings, run_id, "canary", version)
    except sa.exc.SQLAlchemyError:
        return None


def _change(settings: Settings, run_id: str, action: str, version: int, before: ServingState,
            after: ServingState, applied: Callable[[], None]) -> None:  # fmt: skip
    """Write `after`, wait until the server `applied` it; if it does not, put `before` back and fail."""
    write_state(settings, after)
    try:
        applied()
    except (DeployError, ServingError) as err:
        write_state(settings, before)
        raise _fail(settings, run_id, version, action, str(err), before) from err


def wait_label(client: ServingClient, label: str, version: int, timeout_s: float) -> None:
    """Wait until every replica routes `label` to `version` (TF Serving applies the config when it polls)."""
    deadline = time.monotonic() + timeout_s
    for replica in client.replicas():
        where = f" on replica {replica.base_url}" if len(client.base_urls) > 1 else ""
        while True:
            try:
                if int(replica.status(label=label)[0]["version"]) == version:
                    break
            except ServingError as err:
                if err.status is None or err.status >= 500:
                    raise ServingError(f"{err}{where}", err.status) from err
            if time.monotonic() > deadline:
                raise DeployError(f"the server did not route label {label!r} to version {version}{where} within "
                                  f"{timeout_s:.0f} s")  # fmt: skip
            time.sleep(0.5)


def promote(settings: Settings, policy: DeployPolicy, plan: dict[str, Any], run_id: str) -> dict[str, Any]:
    """`stable` → the canary version; the old stable stays loaded (unlabelled) for the grace period.

    Reconciles: moving the label is the commit point. A try that finds `stable` already on the version
    (an earlier try died after moving it) does not move it again, but finishes what that try left
    undone: the version production, the old stable archived, this run's promote row.
    """
    version = plan["version"]
    with client_for(settings) as client, serving_lock(settings, policy.lock_timeout_s):
        state = read_state(settings)
        done = _succeeded(settings, run_id, "promote", version)
        previous = done["previous_stable_version"] if done else plan.get("stable")
        if previous == version:  # stable already when the run was planned: nothing to do
            return {"version": version, "stable": version, "previous": previous, "changed": False}
        if state.stable == version:
            log.info("stable is already version %d: completing the registry and the record of run %s", version,
                     run_id)  # fmt: skip
            wait_label(client, "stable", version, policy.load_timeout_s)
            promoted = state
        else:
            if state.canary != version:
                raise DeployConflict(f"version {version} is not the canary (labels {state.labels}); run the canary "
                                     "first")  # fmt: skip
            previous = state.stable
            require_status(settings, version, "promote", becomes="production")  # before the label moves, not after
            if previous is not None:
                require_status(settings, previous, "promote", becomes="archived")
            promoted = ServingState(state.versions, {"stable": version})
            _change(settings, run_id, "promote", version, state, promoted,
                    lambda: wait_label(client, "stable", version, policy.load_timeout_s))  # fmt: skip
            failpoint(PROMOTE_LABEL_MOVED)  # the commit point is behind; a retry must finish what follows
        _ensure_status(settings, version, "production")
        if previous is not None and _status(settings, previous) == "production":
            _set_status(settings, previous, "archived", f"replaced by version {version}")
        _record(settings, run_id, version, "promote", True, f"stable {previous} → {version}", promoted, previous)
    write_model_card(settings, version)  # the card now says who promoted it, and when
    return {"version": version, "stable": version, "previous": previous, "changed": True}


def rollback(settings: Settings, policy: DeployPolicy, plan: dict[str, Any], run_id: str) -> dict[str, Any]:
    """`stable` → the version it replaced (or the form's version), in one step when still loaded.

    Reconciles: the run rolls back from the stable it planned on. A try that finds `stable` already on
    the target (an earlier try died after moving it) finishes the registry and the record instead.
    """
    with client_for(settings) as client, serving_lock(settings, policy.lock_timeout_s):
        state = read_state(settings)
        current = plan.get("stable") or state.stable  # what this run rolls back from, for every try
        if current is None:
            raise DeployError("nothing to roll back: no version is labelled stable")
        target = plan.get("version") or rollback_target(settings.require_database_url(), settings.model_name, current)
        if target is None or int(target) == current:
            raise _fail(settings, run_id, current, "rollback", f"no earlier production version to roll back to from "
                        f"version {current}; give one in the form", state)  # fmt: skip
        target = int(target)
        dropped = (plan.get("labels") or state.labels).get("canary")
        if state.stable == target:
            log.info("stable is already version %d: completing the registry and the record of run %s", target,
                     run_id)  # fmt: skip
            wait_label(client, "stable", target, policy.load_timeout_s)
            rolled = state
        else:
            if state.stable != current:
                raise DeployConflict(f"stable is version {state.stable}, not the {current} this rollback was planned "
                                     "from; re-run the rollback against the current state")  # fmt: skip
            require_status(settings, target, "rollback")  # before the label moves, not after
            require_status(settings, current, "rollback", becomes="rolled_back")
            if target not in state.versions:  # retired after its grace period: load first, then label
                _change(settings, run_id, "rollback", target, state,
                        ServingState([*state.versions, target], state.labels),
                        lambda: wait_available(client, target, policy.load_timeout_s))  # fmt: skip
            rolled = ServingState(sorted({*state.versions, target}), {"stable": target})
            _change(settings, run_id, "rollback", target, state, rolled,
                    lambda: wait_label(client, "stable", target, policy.load_timeout_s))  # fmt: skip
        _ensure_status(settings, current, "rolled_back", f"rolled back to version {target}")
        if dropped is not None and dropped not in (current, target) and _status(settings, dropped) == "canary":
            _set_status(settings, dropped, "rolled_back", f"canary dropped by the rollback to {target}")
        _ensure_status(settings, target, "production")
        _record(settings, run_id, target, "rollback", True, f"stable {current} → {target}", rolled, current)
        _alert(settings, run_id, "rollback", target, Alert(
            kind="rollback", key=f"{settings.model_name}:{current}->{target}:{run_id}", severity="warning",
            title=f"{settings.model_name} rolled back: stable {current} → {target}",
            impact=f"production now serves version {target}; version {current} is rolled_back and stays loaded "
            f"for {policy.grace_hours:g} h for investigation",
            details=[f"requested by run {run_id}"],
            next_step=f"find out what was wrong with version {current} (its evaluation report, the drift reports)",
        ))  # fmt: skip
    return {"version": target, "stable": target, "rolled_back": current}


def retire(settings: Settings, policy: DeployPolicy, run_id: str, at: dt.datetime | None = None) -> list[int]:
    """Unload unlabelled versions whose grace period is over (or that were rejected); labels stay."""
    from include.db import model_versions

    at = at or now()
    cutoff = at - dt.timedelta(hours=policy.grace_hours)
    with serving_lock(settings, policy.lock_timeout_s):
        state = read_state(settings)
        idle = [v for v in state.versions if v not in state.labels.values()]
        if not idle:
            return []
        with engine(settings.require_database_url()).connect() as conn:
            rows = conn.execute(
                sa.select(model_versions.c.version, model_versions.c.status, model_versions.c.updated_at)
                .where(model_versions.c.version.in_(idle))
            ).all()  # fmt: skip
        expired = sorted(v for v, status, updated in rows if status == "rejected" or updated <= cutoff)
        if expired:
            kept = ServingState([v for v in state.versions if v not in expired], state.labels)
            write_state(settings, kept)
            for version in expired:
                _record(settings, run_id, version, "retire", True,
                        f"unloaded: unlabelled for over {policy.grace_hours:g} h", kept)  # fmt: skip
    return expired
