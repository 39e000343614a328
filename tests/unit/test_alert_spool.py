"""The alert spool, the outbox of last resort while Postgres is unreachable: one JSON line per alert,
rewritten atomically and private (0600), deduplicated like the table, claimed with a lease so two
processes never send the same alert, and handed over when a claimer dies."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from include.core.alerts import GAVE_UP, Alert, Outgoing, _deliver_claimed, _Spool
from include.core.config import AlertOutbox, ConfigError

NOW = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
SINCE = NOW - dt.timedelta(hours=24)


def _outgoing(key: str = "k", at: dt.datetime = NOW) -> Outgoing:
    return Outgoing.of(Alert(kind="drift", key=key, severity="warning", title=f"probe {key}", impact="none"), at)


def _spool(path: Path, token: str = "me", lease_s: float = 60.0) -> _Spool:
    return _Spool(path, AlertOutbox(lease_s=lease_s), token)


def test_an_alert_is_one_private_json_line_written_atomically(tmp_path) -> None:
    path = tmp_path / "alerts" / "spool.jsonl"
    spool = _spool(path)
    first, second = _outgoing("a"), _outgoing("b")
    assert spool.record(first, SINCE) == first.uid
    assert spool.record(second, SINCE) == second.uid
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["uid"], e["key"], e["deliveries"]) for e in entries] == [(first.uid, "a", {}), (second.uid, "b", {})]
    assert Outgoing.from_json(entries[0]) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [".spool.jsonl.lock", "spool.jsonl"]  # no temp file left


def test_a_repeat_delivers_a_pending_alert_and_drops_a_delivered_one(tmp_path) -> None:
    spool = _spool(tmp_path / "spool.jsonl")
    alert = _outgoing()
    assert spool.record(alert, SINCE) == alert.uid
    assert spool.record(_outgoing(), SINCE) == alert.uid  # still pending: the repeat delivers the first
    (claimed,) = spool.claim()
    spool.mark(claimed, "email", "sent to oncall@example.com")
    spool.mark(claimed, "webhook", "posted to nightshift_alert_webhook (200)")
    spool.finish(claimed, True)
    assert spool.record(_outgoing(), SINCE) is None  # delivered: the repeat is dropped
    assert spool.record(_outgoing(), NOW + dt.timedelta(hours=25)) is not None  # outside the window: a new alert


def test_a_claimed_alert_is_not_claimed_again_until_its_lease_lapses(tmp_path) -> None:
    path = tmp_path / "spool.jsonl"
    alert = _outgoing()
    _spool(path).record(alert, SINCE)
    assert [c.handle for c in _spool(path, "worker-1", lease_s=0.3).claim()] == [alert.uid]
    assert _spool(path, "worker-2").claim() == []  # worker-1 holds it
    time.sleep(0.4)  # worker-1 died without finishing
    (taken,) = _spool(path, "worker-2").claim()
    assert taken.handle == alert.uid
    assert not _spool(path, "worker-1").renew(taken)  # the dead worker's claim is gone


def _claim_all(path: str, token: str, start: Any, out: Any) -> None:
    spool = _spool(Path(path), token)
    start.wait(10)
    out.put([c.handle for c in spool.claim()])


@pytest.mark.parametrize("round_", range(5))
def test_processes_claiming_at_once_take_each_alert_once(tmp_path, round_) -> None:
    path = tmp_path / "spool.jsonl"
    spool = _spool(path)
    uids = [spool.record(_outgoing(f"k{i}"), SINCE) for i in range(20)]
    context = multiprocessing.get_context("fork")
    start, out = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_claim_all, args=(str(path), f"w{i}", start, out)) for i in range(6)]
    for worker in workers:
        worker.start()
    claims = [out.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(30)
    taken = [uid for claim in claims for uid in claim]
    assert sorted(taken) == sorted(uids)  # each exactly once


def test_each_channel_outcome_is_recorded_right_after_its_send(tmp_path, monkeypatch) -> None:
    """A channel that fails stays pending (and is not tried again for the next alert in the same pass); one
    that succeeded is not sent again."""
    from include.core import alerts

    sent: list[tuple[str, str]] = []
    spool = _spool(tmp_path / "spool.jsonl")

    def email(alert: Outgoing) -> str:
        sent.append(("email", alert.key))
        return "sent to oncall@example.com"

    def webhook(alert: Outgoing) -> str:
        sent.append(("webhook", alert.key))
        raise ConnectionError("refused")

    monkeypatch.setattr(alerts, "_email", email)
    monkeypatch.setattr(alerts, "_webhook", webhook)
    for key in ("a", "b"):
        spool.record(_outgoing(key, dt.datetime.now(dt.UTC)), SINCE)
    assert _deliver_claimed(spool, spool.claim(), spool.outbox) == 0
    assert sent == [("email", "a"), ("webhook", "a"), ("email", "b")]
    entries = {e["key"]: e["deliveries"] for e in spool._read()}
    assert entries["a"] == {"email": "sent to oncall@example.com", "webhook": "failed: ConnectionError: no status code"}
    assert entries["b"] == {"email": "sent to oncall@example.com"}
    monkeypatch.setattr(alerts, "_webhook", lambda alert: sent.append(("webhook", alert.key)) or "posted to x (200)")
    assert _deliver_claimed(spool, spool.claim(), spool.outbox) == 2
    assert sent[3:] == [("webhook", "a"), ("webhook", "b")]  # the mails were not sent again
    assert _deliver_claimed(spool, spool.claim(), spool.outbox) == 0


def test_a_channel_failing_past_the_give_up_age_is_given_up(tmp_path, monkeypatch) -> None:
    from include.core import alerts

    spool = _Spool(tmp_path / "spool.jsonl", AlertOutbox(give_up_hours=1), "me")
    spool.record(_outgoing("old", dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)), SINCE - dt.timedelta(days=1))
    monkeypatch.setattr(alerts, "_email", lambda alert: "sent to oncall@example.com")
    monkeypatch.setattr(alerts, "_webhook", lambda alert: (_ for _ in ()).throw(ConnectionError("refused")))
    assert _deliver_claimed(spool, spool.claim(), spool.outbox) == 1
    (entry,) = spool._read()
    assert entry["deliveries"]["webhook"] == f"failed: ConnectionError: no status code{GAVE_UP}"
    assert spool.claim() == []


def test_a_line_that_is_not_json_loses_only_itself(tmp_path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = _spool(path)
    alert = _outgoing()
    spool.record(alert, SINCE)
    path.write_text(path.read_text() + "{truncated\n")
    assert [c.handle for c in spool.claim()] == [alert.uid]


def test_the_outbox_settings_come_from_the_environment(tmp_path) -> None:
    outbox = AlertOutbox.from_env({"NIGHTSHIFT_ALERTS_LEASE_S": "30", "NIGHTSHIFT_ALERTS_SPOOL": str(tmp_path / "s")})
    assert (outbox.lease_s, outbox.spool_file(Path("/nowhere"))) == (30.0, tmp_path / "s")
    assert AlertOutbox.from_env({}).spool_file(tmp_path) == tmp_path / "alerts" / "spool.jsonl"
    with pytest.raises(ConfigError, match="NIGHTSHIFT_ALERTS_LEASE_S"):
        AlertOutbox.from_env({"NIGHTSHIFT_ALERTS_LEASE_S": "0"})
