"""Short claims on inbound event keys: Redis when configured, memory otherwise.

An event that changes nothing (entering the app, following the Official Account) is answered
with a welcome once: a claim on its key (sender + CreateTime + event) says it was answered. A
claim lapses after CLAIM_TTL seconds, longer than WeChat's three tries take together.

Messages are not claimed: their processed row's unique key, written in the same transaction as
whatever they changed, handles each at most once (bot/pipeline.py).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

# WeChat tries an event three times, 5 s apart: a claim outlives them all.
CLAIM_TTL = 30


class MemoryDedupe:
    """Single-process fallback when REDIS_URL is unset."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, key: str) -> bool:
        """True if no claim on `key` is in force in this process (none, or one that lapsed)."""
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: t for k, t in self._seen.items() if now - t < CLAIM_TTL}
            since = self._seen.get(key)
            if since is not None and now - since < CLAIM_TTL:
                return False
            self._seen[key] = now
            return True

    def release(self, key: str) -> None:
        """Forget a claim whose handling failed, so WeChat's retry is handled."""
        with self._lock:
            self._seen.pop(key, None)


class RedisDedupe:
    """SET NX in Redis, shared by every worker; fails open (to the database) when Redis is down."""

    def __init__(self, url: str, prefix: str = "czk:msg:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: redis.Redis | None = None
        self._down_until = 0.0

    @property
    def client(self) -> redis.Redis:
        """One connection, not a pool (no check-out per claim; redis-py serialises threads on it),
        opened on first use so that the service starts whether or not Redis is up."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.3,
                                                single_connection_client=True)
        return self._client

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _trip(self, exc: Exception) -> None:
        log.warning("Redis unavailable for dedupe (%s); relying on the database for 5 s", exc)
        self._down_until = time.monotonic() + 5

    def claim(self, key: str) -> bool:
        """True if no worker holds a claim on `key` now (or Redis is down: the database decides)."""
        if not self._usable():
            return True
        try:
            return bool(self.client.set(self.prefix + key, "1", nx=True, ex=CLAIM_TTL))
        except redis.RedisError as exc:
            self._trip(exc)
            return True

    def release(self, key: str) -> None:
        """Drop a claim whose handling failed."""
        if not self._usable():
            return
        try:
            self.client.delete(self.prefix + key)
        except redis.RedisError as exc:
            self._trip(exc)


def make_dedupe(redis_url: str | None) -> MemoryDedupe | RedisDedupe:
    """Redis when configured; otherwise the in-memory fallback, with a warning."""
    if redis_url:
        return RedisDedupe(redis_url)
    log.warning("REDIS_URL is unset: message dedupe is per process (fine for one process only)")
    return MemoryDedupe()
