"""What WeChat's two APIs (WeCom, the Official Account) share: typed errors, and one access token per
app kept in Redis with its expiry, refreshed by one process at a time, refused tokens refreshed once.

WeCom's `gettoken` and the Official Account's `token` both answer `access_token` + `expires_in`
(7200 s) and both void a token early on occasion (a newer one fetched elsewhere, a secret reset), so
one `SharedToken` serves both clients. Without Redis (or while it does not answer) the token lives
in this process, shared by every client of the same app.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import redis

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 300  # a token this close to expiry is refreshed before use
LOCK_TTL_S = 15  # longer than one token call with its timeout
PEER_WAIT_S = 8.0  # how long a process waits for another one's refresh

_RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# The in-memory fallback (no REDIS_URL): shared by every client in this process.
_memory_tokens: dict[str, tuple[str, float]] = {}
_memory_lock = threading.Lock()


class WeChatAPIError(Exception):
    """A WeChat API call failed: non-zero errcode, HTTP error or no answer (errcode None)."""

    service: ClassVar[str] = "WeChat"
    TOKEN_ERRORS: ClassVar[frozenset[int]] = frozenset()  # the access token was refused: refresh it
    BACKOFF_ERRORS: ClassVar[frozenset[int]] = frozenset()  # rate limited or busy: try later

    def __init__(self, errcode: int | None, errmsg: str, http_status: int | None = None) -> None:
        super().__init__(f"{self.service} API error {errcode}: {errmsg}"
                         + (f" (HTTP {http_status})" if http_status else ""))
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status

    @property
    def token_error(self) -> bool:
        """The access token was refused: refresh it."""
        return self.errcode in self.TOKEN_ERRORS

    @property
    def retryable(self) -> bool:
        """Worth trying again later (rate limit, system busy, network or HTTP failure)."""
        return self.errcode is None or self.errcode in self.BACKOFF_ERRORS or self.token_error


class SharedToken:
    """One app's access token: read from Redis (or this process), fetched by exactly one process
    when missing, near its expiry, or refused."""

    def __init__(self, name: str, identity: str, fetch: Callable[[], dict[str, Any]],
                 redis_client: redis.Redis | None, clock: Callable[[], float],
                 error: type[WeChatAPIError]) -> None:
        digest = hashlib.sha1(identity.encode()).hexdigest()[:16]
        self.key = f"czk:{name}:token:{digest}"
        self.lock_key = f"czk:{name}:token-lock:{digest}"
        self.fetch = fetch  # the token call: its JSON answer (`access_token`, `expires_in`)
        self.redis = redis_client
        self.clock = clock
        self.error = error

    def get(self, stale: str | None = None) -> str:
        """A valid access token other than `stale` (the one just refused): the shared one, or a fresh one."""
        if self.redis is not None:
            try:
                return self._redis_token(self.redis, stale)
            except redis.RedisError as exc:
                log.warning("Redis unavailable for the %s token (%s); using this process's copy",
                            self.error.service, exc)
        return self._memory_token(stale)

    def call(self, request: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """`request(token)`, refreshing the token and trying once more if it was refused."""
        token = self.get()
        try:
            return request(token)
        except WeChatAPIError as exc:
            if not exc.token_error:
                raise
            log.info("%s refused the access token (%s); refreshing once", self.error.service, exc.errcode)
        return request(self.get(stale=token))

    def _usable(self, record: tuple[str, float] | None, stale: str | None) -> str | None:
        if record is None:
            return None
        token, expires_at = record
        if token == stale or expires_at - self.clock() <= REFRESH_MARGIN_S:
            return None
        return token

    def _memory_token(self, stale: str | None) -> str:
        with _memory_lock:
            token = self._usable(_memory_tokens.get(self.key), stale)
            if token is None:
                token, expires_at = self._fetch()
                _memory_tokens[self.key] = (token, expires_at)
            return token

    def _redis_read(self, client: redis.Redis) -> tuple[str, float] | None:
        raw = client.get(self.key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return str(data["token"]), float(data["expires_at"])
        except (ValueError, KeyError, TypeError):
            return None

    def _redis_token(self, client: redis.Redis, stale: str | None) -> str:
        deadline = time.monotonic() + PEER_WAIT_S
        while True:
            token = self._usable(self._redis_read(client), stale)
            if token is not None:
                return token
            owner = uuid.uuid4().hex
            if client.set(self.lock_key, owner, nx=True, ex=LOCK_TTL_S):
                try:
                    # Another process may have refreshed between our read and our lock.
                    token = self._usable(self._redis_read(client), stale)
                    if token is not None:
                        return token
                    token, expires_at = self._fetch()
                    ttl = max(1, int(expires_at - self.clock()))
                    client.set(self.key, json.dumps({"token": token, "expires_at": expires_at}), ex=ttl)
                    return token
                finally:
                    client.eval(_RELEASE_LOCK, 1, self.lock_key, owner)
            if time.monotonic() >= deadline:
                raise self.error(None, "timed out waiting for another process to refresh the access token")
            time.sleep(0.05)

    def _fetch(self) -> tuple[str, float]:
        result = self.fetch()
        token = result.get("access_token")
        if not token:
            raise self.error(None, "the token call answered without an access_token")
        return str(token), self.clock() + float(result.get("expires_in", 7200))
