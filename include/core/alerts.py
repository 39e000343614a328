"""Alerts for on-call: one module for every source (task failures, validation, drift, deploys,
deadlines) and every channel (mail through the SMTP connection, a Slack-compatible JSON webhook),
recorded in the Postgres `alerts` table.

Delivery is an outbox. `send` records the alert as pending (in Postgres, or in a local spool file
while Postgres is unreachable), sends it on each channel, and marks each channel delivered right
after its send. What is still pending (a channel that was down, a worker killed between recording
and sending, the spool of an outage) is delivered by the next `send`, by the task's retry, or by
`deliver_pending()`. A deliverer claims an alert with a lease (`FOR UPDATE SKIP LOCKED`), so two
workers never send the same one; a deliverer killed mid-send leaves a claim that lapses.

The same kind and key within `NIGHTSHIFT_MONITOR_DEDUP_HOURS` make one alert: a repeat of a
delivered alert is dropped, a repeat of a pending one delivers it.

A message answers, in one screen: what happened, how bad it is, where to look.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from include.core.assets import DEPLOY_DAG, INGEST_DAG, MONITOR_DAG, TRAIN_DAG
from include.core.config import AlertOutbox
from include.db import ALERT_SEVERITIES, alerts, engine

log = logging.getLogger("nightshift.alerts")

SEVERITIES = ALERT_SEVERITIES
SMTP_CONN_ID = "smtp_default"
WEBHOOK_CONN_ID = "nightshift_alert_webhook"
ONCALL_EMAIL_VARIABLE = "nightshift_oncall_email"
CHANNELS = ("email", "webhook")
GAVE_UP = " (gave up)"
# Postgres is down, restarting or out of reach: the alert goes to the spool instead.
DB_UNREACHABLE: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError)
_BATCH = 50  # pending alerts one deliverer claims at a time
_SPOOL_LOCK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Alert:
    kind: str  # task_failed | validation_failed | drift | quality_drop | retrain_requested | deploy_failed | …
    key: str  # with kind, what makes two alerts "the same" for deduplication
    severity: str
    title: str  # what happened, in one line
    impact: str  # how bad it is / what it means for users of the model
    link: str | None = None  # where to look: a report or the task log
    details: list[str] = field(default_factory=list)
    next_step: str = ""
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r}: use one of {SEVERITIES}")

    def text(self) -> str:
        lines = [f"[{self.severity.upper()}] {self.title}", "", f"How bad: {self.impact}"]
        lines += [f"  - {d}" for d in self.details[:12]]
        if len(self.details) > 12:
            lines.append(f"  - … and {len(self.details) - 12} more")
        if self.next_step:
            lines.append(f"Next: {self.next_step}")
        if self.link:
            lines.append(f"Look here: {self.link}")
        if self.dag_id:
            where = " / ".join(p for p in (self.dag_id, self.task_id, self.run_id) if p)
            lines.append(f"Source: {where}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Outgoing:
    """An alert as the outbox holds it: what every channel sends, whichever process recorded it.

    `uid` names it in Postgres, in the spool and at the receivers (the mail's Message-ID, the
    webhook payload), so a receiver can recognise a repeat."""

    uid: str
    created_at: dt.datetime
    kind: str
    key: str
    severity: str
    title: str
    message: str
    link: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None

    @classmethod
    def of(cls, alert: Alert, at: dt.datetime) -> Outgoing:
        return cls(uid=uuid.uuid4().hex, created_at=at, kind=alert.kind, key=alert.key, severity=alert.severity,
                   title=alert.title, message=alert.text(), link=alert.link, dag_id=alert.dag_id,
                   task_id=alert.task_id, run_id=alert.run_id)  # fmt: skip

    @classmethod
    def from_row(cls, row: Any) -> Outgoing:
        return cls(uid=row["uid"] or f"alert-{row['id']}", created_at=row["created_at"], kind=row["kind"],
                   key=row["dedup_key"], severity=row["severity"], title=row["title"], message=row["message"],
                   link=row["link"], dag_id=row["dag_id"], task_id=row["task_id"], run_id=row["run_id"])  # fmt: skip

    def row(self) -> dict[str, Any]:
        """The `alerts` columns it fills when recorded."""
        return {"uid": self.uid, "created_at": self.created_at, "severity": self.severity, "kind": self.kind,
                "dedup_key": self.key, "title": self.title, "message": self.message, "link": self.link,
                "dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat()}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Outgoing:
        fields = {name: entry.get(name) for name in cls.__dataclass_fields__}
        return cls(**{**fields, "created_at": dt.datetime.fromisoformat(entry["created_at"])})

    def text(self) -> str:
        return self.message

    def slack(self) -> dict[str, Any]:
        """A Slack-compatible payload (`text` for any JSON webhook, `blocks` for Slack)."""
        return {
            "text": f"[{self.severity.upper()}] {self.title}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": self.message}}],
            "nightshift": {"uid": self.uid, "kind": self.kind, "key": self.key, "severity": self.severity,
                           "link": self.link, "dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id},
        }  # fmt: skip


def _dedup_hours() -> float:
    from include.core.config import MonitorPolicy

    return MonitorPolicy.from_env().dedup_hours


def _token() -> str:
    """Who holds a claim: host and process (for people reading the table) and a nonce (for the code)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _spool(outbox: AlertOutbox, token: str) -> _Spool:
    from include.core.config import load_settings

    return _Spool(outbox.spool_file(load_settings().local_dir), outbox, token)


# -- the two entry points ---------------------------------------------------------------------------


def send(url: str, alert: Alert, at: dt.datetime | None = None) -> int | None:
    """Record `alert` as pending, deliver it on every channel, then whatever else is pending.

    Returns its id in `alerts`; None when the same alert was delivered already, or when Postgres was
    unreachable (it is then in the spool, delivered from there and replayed into Postgres later).
    """
    at = at or dt.datetime.now(dt.UTC)
    outbox, token = AlertOutbox.from_env(), _token()
    outgoing = Outgoing.of(alert, at)
    since = at - dt.timedelta(hours=_dedup_hours())
    try:
        _replay_spool(url, outbox, token)
        alert_id = _record(url, outgoing, since)
    except DB_UNREACHABLE as err:
        log.error("alerts: Postgres is unreachable (%s); the alert waits in the local spool", _failure(err))
        _send_spooled(outgoing, since, outbox, token)
        return None
    if alert_id is None:
        return None
    store = _Postgres(url, outbox, token)
    try:
        _deliver_claimed(store, store.claim(only=alert_id), outbox)
        _deliver_claimed(store, store.claim(), outbox)  # earlier alerts a channel or a dead worker left pending
    except Exception as err:  # it is recorded: the next send, retry or deliver_pending() delivers it
        log.error("alerts: #%d is recorded, its delivery stopped (%s); it stays pending", alert_id, _failure(err))
    return alert_id


def deliver_pending(url: str | None = None) -> int:
    """Deliver every alert still pending: replay the spool into Postgres, then send what waits there
    (with Postgres unreachable, what waits in the spool). Returns how many were fully delivered.

    Never raises, so any task or callback can call it first thing."""
    try:
        from include.core.config import load_settings

        url = url or load_settings().require_database_url()
        outbox, token = AlertOutbox.from_env(), _token()
        try:
            _replay_spool(url, outbox, token)
            store: _Store = _Postgres(url, outbox, token)
            claimed = store.claim()
        except DB_UNREACHABLE as err:
            log.warning("alerts: Postgres is unreachable (%s); delivering from the local spool", _failure(err))
            store = _spool(outbox, token)
            claimed = store.claim()
        return _deliver_claimed(store, claimed, outbox)
    except Exception as err:
        log.error("alerts: pending deliveries stopped (%s); the next alert or retry tries again", _failure(err))
        return 0


# -- recording ----------------------------------------------------------------------------------------


def _record(url: str, outgoing: Outgoing, since: dt.datetime) -> int | None:
    """The id to deliver: a new row, or the same alert's row while it is still pending; None when delivered."""
    with engine(url).begin() as conn:
        _lock(conn, outgoing.kind, outgoing.key)
        earlier = conn.execute(
            sa.select(alerts.c.id, alerts.c.delivered_at).where(
                alerts.c.kind == outgoing.kind, alerts.c.dedup_key == outgoing.key, alerts.c.created_at > since)
            .order_by(alerts.c.id.desc()).limit(1)
        ).first()  # fmt: skip
        if earlier is not None and earlier.delivered_at is not None:
            log.info("alert %s/%s already delivered as #%d; not repeated", outgoing.kind, outgoing.key, earlier.id)
            return None
        if earlier is not None:
            log.info("alert %s/%s is #%d, still pending: delivering it", outgoing.kind, outgoing.key, earlier.id)
            return int(earlier.id)
        alert_id = conn.execute(
            sa.insert(alerts).values(**outgoing.row(), deliveries={}).returning(alerts.c.id)
        ).scalar_one()
    log.warning("ALERT #%d %s", alert_id, outgoing.message.replace("\n", " | "))
    return int(alert_id)


def _lock(conn: sa.Connection, kind: str, key: str) -> None:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"{kind}:{key}".encode())})


def _send_spooled(outgoing: Outgoing, since: dt.datetime, outbox: AlertOutbox, token: str) -> None:
    spool = _spool(outbox, token)
    try:
        uid = spool.record(outgoing, since)
    except OSError as err:  # no database and no disk: sending unrecorded beats not sending
        log.error("alerts: the spool %s is not writable either (%s); sending unrecorded", spool.path, err)
        for channel in CHANNELS:
            _deliver(channel, outgoing)
        return
    if uid is not None:
        _deliver_claimed(spool, spool.claim(only=uid), outbox)
        _deliver_claimed(spool, spool.claim(), outbox)


def _replay_spool(url: str, outbox: AlertOutbox, token: str) -> None:
    spool = _spool(outbox, token)
    if spool.path.exists():  # the common case costs one stat
        spool.replay(url, dt.timedelta(hours=_dedup_hours()))


# -- delivering ---------------------------------------------------------------------------------------


@dataclass
class _Claimed:
    handle: Any  # the row id in Postgres, the uid in the spool
    alert: Outgoing
    deliveries: dict[str, str]


class _Store(Protocol):
    def claim(self, only: Any = None) -> list[_Claimed]: ...
    def renew(self, claimed: _Claimed) -> bool: ...
    def mark(self, claimed: _Claimed, channel: str, outcome: str) -> None: ...
    def finish(self, claimed: _Claimed, delivered: bool) -> None: ...


def _final(outcome: str | None) -> bool:
    """Nothing left to do on the channel: delivered, not configured, or given up."""
    return bool(outcome) and (outcome.startswith(("sent", "posted", "skipped")) or outcome.endswith(GAVE_UP))


def _all_final(deliveries: dict[str, str]) -> bool:
    return all(_final(deliveries.get(channel)) for channel in CHANNELS)


def _deliver_claimed(store: _Store, claimed: list[_Claimed], outbox: AlertOutbox) -> int:
    """Send each claimed alert on each channel it still needs, recording each outcome right after its send."""
    down: set[str] = set()  # failed in this pass: not tried again on the next alerts, each would wait its timeout
    delivered = 0
    for item in claimed:
        lost = False
        for channel in CHANNELS:
            if _final(item.deliveries.get(channel)) or channel in down:
                continue
            if not store.renew(item):  # the lease lapsed and another deliverer took over
                lost = True
                break
            outcome = _deliver(channel, item.alert)
            if not _final(outcome):
                down.add(channel)
                age = dt.datetime.now(dt.UTC) - item.alert.created_at
                if age > dt.timedelta(hours=outbox.give_up_hours):
                    outcome += GAVE_UP
                    log.error("alert %s: %s still fails after %s; given up", item.alert.uid, channel, age)
            store.mark(item, channel, outcome)
            item.deliveries[channel] = outcome
        if lost:
            continue
        done = _all_final(item.deliveries)
        store.finish(item, done)
        delivered += done
    return delivered


def _deliver(channel: str, alert: Outgoing) -> str:
    try:
        return _sender(channel)(alert)
    except Exception as err:  # a channel down must not lose the alert: it stays pending
        outcome = _failure(err)
        log.error("alert delivery via %s %s", channel, outcome)
        return outcome


def _failure(err: Exception) -> str:
    """The error's type and status code only: its text can carry the webhook URL (Slack's secret) or a
    server's reply. Two colons, so the ML Ops view shows the type as the reason."""
    code = getattr(getattr(err, "response", None), "status_code", None) or getattr(err, "smtp_code", None)
    return f"failed: {type(err).__name__}: {code or 'no status code'}"


class _Postgres:
    """The outbox in the `alerts` table; the claim is a lease in `claimed_until`, taken under a row lock."""

    def __init__(self, url: str, outbox: AlertOutbox, token: str) -> None:
        self.url, self.token = url, token
        self.lease = dt.timedelta(seconds=outbox.lease_s)

    def claim(self, only: Any = None) -> list[_Claimed]:
        a = alerts
        free = sa.or_(a.c.claimed_until.is_(None), a.c.claimed_until < sa.func.now())
        pick = sa.select(a.c.id).where(a.c.delivered_at.is_(None), free).order_by(a.c.id).limit(_BATCH)
        if only is not None:
            pick = pick.where(a.c.id == only)
        with engine(self.url).begin() as conn:
            ids = list(conn.execute(pick.with_for_update(skip_locked=True)).scalars())
            if not ids:
                return []
            rows = conn.execute(
                sa.update(a).where(a.c.id.in_(ids))
                .values(claimed_until=sa.func.now() + self.lease, claimed_by=self.token).returning(a)
            ).mappings().all()  # fmt: skip
        return [_Claimed(r["id"], Outgoing.from_row(r), dict(r["deliveries"] or {})) for r in sorted(
            rows, key=lambda r: r["id"])]  # fmt: skip

    def renew(self, claimed: _Claimed) -> bool:
        a = alerts
        with engine(self.url).begin() as conn:
            return conn.execute(
                sa.update(a).where(a.c.id == claimed.handle, a.c.claimed_by == self.token, a.c.delivered_at.is_(None))
                .values(claimed_until=sa.func.now() + self.lease).returning(a.c.id)
            ).first() is not None  # fmt: skip

    def mark(self, claimed: _Claimed, channel: str, outcome: str) -> None:
        a = alerts
        merged = a.c.deliveries.op("||", return_type=JSONB)(sa.func.jsonb_build_object(channel, outcome))
        with engine(self.url).begin() as conn:
            conn.execute(sa.update(a).where(a.c.id == claimed.handle).values(deliveries=merged))

    def finish(self, claimed: _Claimed, delivered: bool) -> None:
        a = alerts
        done = {"delivered_at": sa.func.now()} if delivered else {}
        with engine(self.url).begin() as conn:
            conn.execute(sa.update(a).where(a.c.id == claimed.handle, a.c.claimed_by == self.token)
                         .values(claimed_until=None, **done))  # fmt: skip


class _Spool:
    """The outbox while Postgres is unreachable: JSON lines, one alert each, rewritten atomically (0600)
    under an exclusive lock, so the processes of one worker never send an alert twice. An entry stays
    until it is replayed into Postgres, delivered or not."""

    def __init__(self, path: Path, outbox: AlertOutbox, token: str) -> None:
        self.path, self.outbox, self.token = path, outbox, token

    @contextlib.contextmanager
    def _entries(self) -> Iterator[list[dict[str, Any]]]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock(lock, f"the alert spool {self.path}")
            entries = self._read()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                self._write(entries)
        finally:
            os.close(lock)  # releases the lock

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            try:
                entries.append(json.loads(line))
            except ValueError:
                log.error("alerts: line %d of the spool %s is not JSON; left out", number, self.path)
        return entries

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def record(self, outgoing: Outgoing, since: dt.datetime) -> str | None:
        """The uid to deliver: a new entry, or the same alert's while pending; None when it was delivered."""
        with self._entries() as entries:
            same = [e for e in entries if (e["kind"], e["key"]) == (outgoing.kind, outgoing.key)
                    and dt.datetime.fromisoformat(e["created_at"]) > since]  # fmt: skip
            if same and _all_final(same[-1]["deliveries"]):
                log.info("alert %s/%s already delivered (spooled); not repeated", outgoing.kind, outgoing.key)
                return None
            if same:
                return same[-1]["uid"]
            entries.append({**outgoing.to_json(), "deliveries": {}, "claimed_until": None, "claimed_by": None})
        log.warning("ALERT (spooled %s) %s", outgoing.uid, outgoing.message.replace("\n", " | "))
        return outgoing.uid

    def claim(self, only: Any = None) -> list[_Claimed]:
        now = time.time()
        claimed = []
        with self._entries() as entries:
            for entry in entries:
                if (only is not None and entry["uid"] != only) or _all_final(entry["deliveries"]):
                    continue
                if (entry.get("claimed_until") or 0) > now or len(claimed) >= _BATCH:
                    continue
                entry.update(claimed_until=now + self.outbox.lease_s, claimed_by=self.token)
                claimed.append(_Claimed(entry["uid"], Outgoing.from_json(entry), dict(entry["deliveries"])))
        return claimed

    def _update(self, claimed: _Claimed, change: Callable[[dict[str, Any]], bool]) -> bool:
        with self._entries() as entries:
            entry = next((e for e in entries if e["uid"] == claimed.handle), None)
            return entry is not None and change(entry)

    def renew(self, claimed: _Claimed) -> bool:
        def extend(entry: dict[str, Any]) -> bool:
            if entry.get("claimed_by") != self.token:
                return False
            entry["claimed_until"] = time.time() + self.outbox.lease_s
            return True

        return self._update(claimed, extend)

    def mark(self, claimed: _Claimed, channel: str, outcome: str) -> None:
        def record(entry: dict[str, Any]) -> bool:
            entry["deliveries"][channel] = outcome
            return True

        if not self._update(claimed, record):
            log.error("alert %s: no longer in the spool to record its %s outcome", claimed.handle, channel)

    def finish(self, claimed: _Claimed, delivered: bool) -> None:
        def release(entry: dict[str, Any]) -> bool:
            if entry.get("claimed_by") == self.token:
                entry["claimed_until"] = None
            return True

        self._update(claimed, release)

    def alerted(self, dag_id: str, run_id: str, task_id: str) -> bool:
        if not self.path.exists():
            return False
        with self._entries() as entries:
            return any((e.get("dag_id"), e.get("run_id"), e.get("task_id")) == (dag_id, run_id, task_id)
                       for e in entries)  # fmt: skip

    def replay(self, url: str, window: dt.timedelta) -> int:
        """Move every entry no deliverer is holding into Postgres, each in its own transaction; returns how many."""
        now, moved, unreachable = time.time(), 0, None
        with self._entries() as entries:
            for entry in list(entries):
                if (entry.get("claimed_until") or 0) > now:
                    continue  # being sent right now: replayed next time, with its outcome
                try:
                    with engine(url).begin() as conn:
                        _replay_entry(conn, entry, window)
                except DB_UNREACHABLE as err:  # keep the rest, and write down what did move
                    unreachable = err
                    break
                entries.remove(entry)
                moved += 1
        if moved:
            log.warning("alerts: %d spooled alert(s) replayed into Postgres from %s", moved, self.path)
        if unreachable is not None:
            raise unreachable
        return moved


def _flock(fd: int, what: str) -> None:
    """An exclusive lock on `fd`, waiting at most _SPOOL_LOCK_TIMEOUT_S (holders never hold it across a send)."""
    deadline = time.monotonic() + _SPOOL_LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} stayed locked for {_SPOOL_LOCK_TIMEOUT_S:.0f} s") from None
            time.sleep(0.05)


def _replay_entry(conn: sa.Connection, entry: dict[str, Any], window: dt.timedelta) -> None:
    """A spooled alert into `alerts`, idempotently: its own row again (a replay cut short), or the same
    alert's row recorded before the outage (then what the spool delivered counts there), or a new row."""
    a, outgoing = alerts, Outgoing.from_json(entry)
    _lock(conn, outgoing.kind, outgoing.key)
    row = conn.execute(sa.select(a).where(a.c.uid == outgoing.uid)).mappings().first() or conn.execute(
        sa.select(a).where(a.c.kind == outgoing.kind, a.c.dedup_key == outgoing.key,
                           a.c.created_at > outgoing.created_at - window, a.c.created_at < outgoing.created_at + window)
        .order_by(a.c.id.desc()).limit(1)
    ).mappings().first()  # fmt: skip
    spooled = dict(entry["deliveries"])
    if row is None:
        delivered = {"delivered_at": sa.func.now()} if _all_final(spooled) else {}
        conn.execute(sa.insert(a).values(**outgoing.row(), deliveries=spooled, **delivered))
        return
    merged = dict(row["deliveries"] or {})
    merged.update({channel: out for channel, out in spooled.items() if _final(out) and not _final(merged.get(channel))})
    done = {"delivered_at": sa.func.now()} if row["delivered_at"] is None and _all_final(merged) else {}
    conn.execute(sa.update(a).where(a.c.id == row["id"]).values(deliveries=merged, **done))


# -- channels -----------------------------------------------------------------------------------------


def _connection(conn_id: str):
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _email(alert: Outgoing) -> str:
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import Variable

    if _connection(SMTP_CONN_ID) is None:
        return f"skipped: no {SMTP_CONN_ID} connection"
    to = Variable.get(ONCALL_EMAIL_VARIABLE, default="oncall@example.com")
    body = _mail_body(alert)
    # The uid as Message-ID: a mail system that sees the same alert twice can tell.
    headers = {"Message-ID": f"<{alert.uid}@nightshift.alerts>", "X-Nightshift-Alert": alert.uid}
    with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as hook:
        hook.send_email_smtp(to=to, from_email="nightshift@localhost", html_content=body, custom_headers=headers,
                             subject=f"[nightshift {alert.severity}] {alert.title}")  # fmt: skip
    return f"sent to {to}"


def _mail_body(alert: Alert | Outgoing) -> str:
    """The alert's text as the mail's HTML, through an autoescaping template (titles and details carry data)."""
    import jinja2

    template = jinja2.Environment(autoescape=True).from_string(MAIL_TEMPLATE)
    return template.render(text=alert.text())


MAIL_TEMPLATE = "<pre style='font-family:monospace'>{{ text }}</pre>"


def _webhook(alert: Outgoing) -> str:
    import httpx
    from airflow.sdk.log import mask_secret

    conn = _connection(WEBHOOK_CONN_ID)
    if conn is None:
        return f"skipped: no {WEBHOOK_CONN_ID} connection"
    extra = conn.extra_dejson
    url = f"{conn.schema or 'http'}://{conn.host}{f':{conn.port}' if conn.port else ''}{extra.get('path', '')}"
    secrets = [s for s in (url, conn.password, extra.get("path")) if s]
    for secret in secrets:  # the URL's path is Slack's token: masked in task logs from here on
        mask_secret(secret)
    with _redacted(logging.getLogger("httpx"), secrets):  # httpx logs every request's URL at INFO
        response = httpx.post(url, content=json.dumps(alert.slack()), timeout=float(extra.get("timeout", 5)),
                              headers={"Content-Type": "application/json"})  # fmt: skip
    response.raise_for_status()
    return f"posted to {WEBHOOK_CONN_ID} ({response.status_code})"


def _sender(channel: str) -> Callable[[Outgoing], str]:
    return {"email": _email, "webhook": _webhook}[channel]


class _Redact(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted(secrets, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self.secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, ()
        return True


@contextlib.contextmanager
def _redacted(logger: logging.Logger, secrets: list[str]):
    """`logger`'s records without `secrets`, also where Airflow's masker is not on (tests, the CLI)."""
    redact = _Redact(secrets)
    logger.addFilter(redact)
    try:
        yield
    finally:
        logger.removeFilter(redact)


# -- task failures ------------------------------------------------------------------------------------


def already_alerted(url: str, dag_id: str, run_id: str, task_id: str) -> bool:
    """Did this task instance already raise its own, more precise alert before failing (also into the spool)?"""
    if _spool(AlertOutbox.from_env(), _token()).alerted(dag_id, run_id, task_id):
        return True
    try:
        with engine(url).connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(alerts).where(
                    alerts.c.dag_id == dag_id, alerts.c.run_id == run_id, alerts.c.task_id == task_id)
            ).scalar_one() > 0  # fmt: skip
    except DB_UNREACHABLE:
        return False  # send() spools the failure alert; one too many beats none


def on_task_failure(context: dict[str, Any]) -> None:
    """`on_failure_callback` of every DAG: a task failed after its last retry."""
    from include.core.config import load_settings

    ti = context["ti"]
    url = load_settings().require_database_url()
    if already_alerted(url, ti.dag_id, ti.run_id, ti.task_id):
        deliver_pending(url)  # its own alert may still be pending (the task died sending it)
        return
    error = context.get("exception")
    send(url, Alert(
        kind="task_failed", key=f"{ti.dag_id}.{ti.task_id}:{ti.run_id}", severity="critical",
        title=f"{ti.dag_id}.{ti.task_id} failed after {ti.try_number} attempt(s)",
        impact=_impact(ti.dag_id),
        details=[f"{type(error).__name__}: {str(error)[:400]}"] if error else [],
        next_step="read the log, fix the cause, then clear the task to resume the run",
        link=getattr(ti, "log_url", None), dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
    ))  # fmt: skip


def _impact(dag_id: str) -> str:
    return {
        INGEST_DAG: "the day's features are not published; tonight's training uses older data",
        TRAIN_DAG: "no new model tonight; production keeps serving the current stable version",
        DEPLOY_DAG: "the new version is not serving; the stable version keeps serving, untouched",
        MONITOR_DAG: "the day is not monitored: drift or a quality drop would go unnoticed",
    }.get(dag_id, "the pipeline run stopped at this task")
