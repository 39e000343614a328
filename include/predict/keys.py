"""API keys of the prediction service: created and revoked with `bin/nightshift predict-keys`, stored as
sha256 hashes in Postgres (the key is shown once, at creation), each with its own rate limit."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from include.db import api_keys, engine

KEY_PREFIX = "ns_"


class ApiKeyError(ValueError):
    """A key operation that cannot be done (a name taken, a key not found)."""


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    requests_per_minute: int


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(url: str, name: str, requests_per_minute: int) -> str:
    """A new key named `name`; returns the key itself, which is stored nowhere."""
    if not name or len(name) > 100:
        raise ApiKeyError("a key needs a name of 1 to 100 characters")
    if requests_per_minute < 1:
        raise ApiKeyError(f"--rate {requests_per_minute}: a key needs at least 1 request a minute")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = {"name": name, "key_sha256": digest(key), "prefix": key[:10], "requests_per_minute": requests_per_minute,
           "created_at": dt.datetime.now(dt.UTC)}  # fmt: skip
    try:
        with engine(url).begin() as conn:
            conn.execute(sa.insert(api_keys).values(row))
    except sa.exc.IntegrityError as err:
        raise ApiKeyError(f"a key named {name!r} exists; revoke it or choose another name") from err
    return key


def revoke_key(url: str, name: str) -> bool:
    """Revoke the key named `name`; False when no live key has that name."""
    with engine(url).begin() as conn:
        done = conn.execute(
            sa.update(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=dt.datetime.now(dt.UTC))
        )  # fmt: skip
    return done.rowcount == 1


def list_keys(url: str) -> list[dict[str, object]]:
    columns = [api_keys.c.name, api_keys.c.prefix, api_keys.c.requests_per_minute, api_keys.c.created_at,
               api_keys.c.revoked_at]  # fmt: skip
    with engine(url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(*columns).order_by(api_keys.c.id)).mappings()]


class KeyRing:
    """The live keys as the service checks them: looked up by hash, trusted for `ttl_s` (so a revoked key
    is refused within that long), with a token bucket per key."""

    def __init__(self, url: str, ttl_s: float) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, ApiKey | None]:
        """(True, what `check` would answer) when that is known without asking Postgres, else (False, None):
        the event loop may ask this, and leaves the query to a thread."""
        cached = self._cache.get(digest(key))
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return True, cached[1]
        return False, None

    def check(self, key: str) -> ApiKey | None:
        """The live key, or None (unknown or revoked)."""
        known, found = self.cached(key)
        if known:
            return found
        hashed = digest(key)
        now = time.monotonic()
        query = sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.requests_per_minute).where(
            api_keys.c.key_sha256 == hashed, api_keys.c.revoked_at.is_(None)
        )
        with engine(self.url).connect() as conn:
            row = conn.execute(query).mappings().first()
        found = ApiKey(**row) if row else None
        with self._lock:
            if len(self._cache) > 10_000:  # unknown keys sent at random must not grow it without end
                self._cache.clear()
            self._cache[hashed] = (now, found)
        return found

    def allow(self, key: ApiKey) -> float:
        """0 when the request may go on, else the seconds until the key's bucket has a token again."""
        rate = key.requests_per_minute / 60.0
        capacity = max(1.0, rate)  # a second's worth of requests may come at once
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key.id, (capacity, now))
            tokens = min(capacity, tokens + (now - then) * rate)
            if tokens >= 1:
                self._buckets[key.id] = (tokens - 1, now)
                return 0.0
            self._buckets[key.id] = (tokens, now)
            return (1 - tokens) / rate
