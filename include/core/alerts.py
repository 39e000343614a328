"""Alerts for on-call: one module for every source (task failures, validation, drift, deploys,
deadlines) and every channel (mail through the SMTP connection, a Slack-compatible JSON webhook,
and always the Postgres `alerts` table).

The same kind and key within `NIGHTSHIFT_MONITOR_DEDUP_HOURS` make one alert, not many. A failed
delivery never loses the alert: it is in Postgres with the delivery error next to it.

A message answers, in one screen: what happened, how bad it is, where to look.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from include.core.assets import DEPLOY_DAG, INGEST_DAG, MONITOR_DAG, TRAIN_DAG
from include.db import ALERT_SEVERITIES, alerts, engine

log = logging.getLogger("nightshift.alerts")

SEVERITIES = ALERT_SEVERITIES
SMTP_CONN_ID = "smtp_default"
WEBHOOK_CONN_ID = "nightshift_alert_webhook"
ONCALL_EMAIL_VARIABLE = "nightshift_oncall_email"


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

    def slack(self) -> dict[str, Any]:
        """A Slack-compatible payload (`text` for any JSON webhook, `blocks` for Slack)."""
        return {
            "text": f"[{self.severity.upper()}] {self.title}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": self.text()}}],
            "nightshift": {"kind": self.kind, "key": self.key, "severity": self.severity, "link": self.link,
                           "dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id},
        }  # fmt: skip


def _dedup_hours() -> float:
    from include.core.config import MonitorPolicy

    return MonitorPolicy.from_env().dedup_hours


def send(url: str, alert: Alert, at: dt.datetime | None = None) -> int | None:
    """Record and deliver `alert`; returns its id, or None when the same alert is already out."""
    at = at or dt.datetime.now(dt.UTC)
    since = at - dt.timedelta(hours=_dedup_hours())
    with engine(url).begin() as conn:
        lock = zlib.crc32(f"{alert.kind}:{alert.key}".encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
        earlier = conn.execute(
            sa.select(alerts.c.id).where(alerts.c.kind == alert.kind, alerts.c.dedup_key == alert.key,
                                         alerts.c.created_at > since).limit(1)
        ).scalar()  # fmt: skip
        if earlier is not None:
            log.info("alert %s/%s already sent as #%d; not repeated", alert.kind, alert.key, earlier)
            return None
        alert_id = conn.execute(
            sa.insert(alerts).values(
                created_at=at, severity=alert.severity, kind=alert.kind, dedup_key=alert.key, title=alert.title,
                message=alert.text(), link=alert.link, dag_id=alert.dag_id, task_id=alert.task_id,
                run_id=alert.run_id, deliveries={},
            ).returning(alerts.c.id)
        ).scalar_one()  # fmt: skip
    deliveries = {"email": _deliver(_email, alert), "webhook": _deliver(_webhook, alert)}
    with engine(url).begin() as conn:
        conn.execute(sa.update(alerts).where(alerts.c.id == alert_id).values(deliveries=deliveries))
    log.warning("ALERT #%d %s", alert_id, alert.text().replace("\n", " | "))
    return alert_id


def _deliver(channel, alert: Alert) -> str:
    try:
        return channel(alert)
    except Exception as err:  # a channel down must not lose the alert (it is in Postgres)
        outcome = _failure(err)
        log.error("alert delivery via %s %s", channel.__name__.strip("_"), outcome)
        return outcome


def _failure(err: Exception) -> str:
    """The error's type and status code only: its text can carry the webhook URL (Slack's secret) or a
    server's reply. Two colons, so the ML Ops view shows the type as the reason."""
    code = getattr(getattr(err, "response", None), "status_code", None) or getattr(err, "smtp_code", None)
    return f"failed: {type(err).__name__}: {code or 'no status code'}"


def _connection(conn_id: str):
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _email(alert: Alert) -> str:
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import Variable

    if _connection(SMTP_CONN_ID) is None:
        return f"skipped: no {SMTP_CONN_ID} connection"
    to = Variable.get(ONCALL_EMAIL_VARIABLE, default="oncall@example.com")
    body = _mail_body(alert)
    with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as hook:
        hook.send_email_smtp(to=to, from_email="nightshift@localhost", html_content=body,
                             subject=f"[nightshift {alert.severity}] {alert.title}")  # fmt: skip
    return f"sent to {to}"


def _mail_body(alert: Alert) -> str:
    """The alert's text as the mail's HTML, through an autoescaping template (titles and details carry data)."""
    import jinja2

    template = jinja2.Environment(autoescape=True).from_string(MAIL_TEMPLATE)
    return template.render(text=alert.text())


MAIL_TEMPLATE = "<pre style='font-family:monospace'>{{ text }}</pre>"


def _webhook(alert: Alert) -> str:
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


def already_alerted(url: str, dag_id: str, run_id: str, task_id: str) -> bool:
    """Did this task instance already raise its own, more precise alert before failing?"""
    with engine(url).connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(alerts).where(
                alerts.c.dag_id == dag_id, alerts.c.run_id == run_id, alerts.c.task_id == task_id)
        ).scalar_one() > 0  # fmt: skip


def on_task_failure(context: dict[str, Any]) -> None:
    """`on_failure_callback` of every DAG: a task failed after its last retry."""
    from include.core.config import load_settings

    ti = context["ti"]
    url = load_settings().require_database_url()
    if already_alerted(url, ti.dag_id, ti.run_id, ti.task_id):
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
