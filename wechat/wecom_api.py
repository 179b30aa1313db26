"""A small WeCom API client: one shared access token, every call under WECOM_API_BASE, no hidden retries.

Built on wechatpy's enterprise `WeChatClient`, with its 1.8 pitfalls designed out:
gettoken goes to `settings.wecom_api_base` like every other call, every request
has a timeout, `auto_retry` is off (a token error is refreshed and retried once
here; anything else is the caller's, i.e. the outbox's, to retry), and the token
and its expiry live in Redis, refreshed by one process at a time (`wechat.token.SharedToken`, which
the Official Account's client shares).

Safe to share between threads (the outbox keeps several calls in flight): the token is
refreshed once however many calls saw it expire, and every call (gettoken too) first takes
a permit from the app's rate cap (`CallRate`, WECOM_CALLS_PER_MINUTE, shared through Redis).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import requests
from requests.adapters import HTTPAdapter
from wechatpy.enterprise import WeChatClient
from wechatpy.exceptions import WeChatClientException

from core.config import Settings
from wechat.token import SharedToken, WeChatAPIError

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
MAX_RECIPIENTS = 1000
MAX_TEXT_BYTES = 2048
# message/send's duplicate check: content a member received within this many seconds is not
# delivered to them again (`duplicate_check_interval`, at most 4 hours).
DUPLICATE_CHECK_MAX_S = 4 * 3600
REDIS_RETRY_S = 10  # the call rate asks Redis again this long after it failed to answer
POOL_SIZE = 32  # kept-alive connections to WeCom, per client: more than the outbox's calls in flight

# One permit: the current bucket (by the Redis server's clock, the same for every process) is
# counted; 0 when the call may go, else the milliseconds until the next bucket begins.
_TAKE_PERMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local span = tonumber(ARGV[1])
local bucket = math.floor(now / span)
local key = KEYS[1] .. ':' .. bucket
local used = redis.call('INCR', key)
if used == 1 then redis.call('PEXPIRE', key, 2 * span) end
if used <= tonumber(ARGV[2]) then return 0 end
return (bucket + 1) * span - now
"""


def rate_buckets(per_minute: int) -> tuple[int, int]:
    """(bucket length in ms, calls per bucket) such that no 60-second window, wherever it starts,
    holds more than `per_minute` calls: such a window touches at most ceil(60000 / span) + 1
    buckets. One-second buckets from 61 a minute up (9,000 → 147 a second); below, one call per
    bucket of about 60 / (per_minute − 1) s."""
    per_minute = max(2, per_minute)
    if per_minute >= 61:
        return 1000, per_minute // 61
    return math.ceil(60_000 / (per_minute - 1)), 1


class CallRate:
    """The app's cap on WeCom API calls per minute, counted in Redis across processes (or, without
    Redis, in this process: every client of the process shares one count)."""

    _memory: dict[str, tuple[int, int]] = {}  # key → (bucket, calls in it)
    _memory_lock = threading.Lock()

    def __init__(self, per_minute: int, key: str, redis_client: redis.Redis | None = None) -> None:
        self.per_minute = per_minute
        self.span_ms, self.per_bucket = rate_buckets(per_minute)
        self.key = key
        self.redis = redis_client
        self._script = redis_client.register_script(_TAKE_PERMIT) if redis_client is not None else None
        self._redis_down_until = 0.0  # after a Redis error, count here for a while rather than wait on it

    def _wait_ms(self) -> int:
        """Take a permit if one is free: 0; else how long to wait before asking again."""
        if self._script is not None and time.monotonic() >= self._redis_down_until:
            try:
                return int(self._script(keys=[self.key], args=[self.span_ms, self.per_bucket]))
            except redis.RedisError as exc:
                log.warning("Redis unavailable for the WeCom call rate (%s); counting in this process for %d s",
                            exc, REDIS_RETRY_S)
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
        now = int(time.time() * 1000)
        bucket = now // self.span_ms
        with self._memory_lock:
            current, used = self._memory.get(self.key, (bucket, 0))
            if current != bucket:
                used = 0
            if used < self.per_bucket:
                self._memory[self.key] = (bucket, used + 1)
                return 0
        return (bucket + 1) * self.span_ms - now

    def acquire(self) -> None:
        """Block until this call may go."""
        while True:
            wait = self._wait_ms()
            if wait <= 0:
                return
            time.sleep(wait / 1000 + random.uniform(0, 0.005))  # a little jitter spreads the waiters


class WeComAPIError(WeChatAPIError):
    """A WeCom API call failed: non-zero errcode, HTTP error or no answer (errcode None)."""

    service = "WeCom"
    TOKEN_ERRORS = frozenset({40014, 42001})  # invalid / expired access_token: refresh
    BACKOFF_ERRORS = frozenset({45009, 45033, -1})  # rate limited or busy: try later


class _Client(WeChatClient):
    """wechatpy's client with the API base taken from settings and the token from `WeComAPI`."""

    def __init__(self, settings: Settings, token_source: Callable[[], str], timeout: float) -> None:
        super().__init__(settings.wecom_corp_id, settings.wecom_secret or "", timeout=timeout, auto_retry=False)
        self.API_BASE_URL = settings.wecom_api_base  # _request reads it from the instance
        self._token_source = token_source

    @property
    def access_token(self) -> str:  # wechatpy's endpoints (client.user.get …) use the shared token
        source = self.__dict__.get("_token_source")
        if source is None:  # wechatpy's __new__ inspects every attribute before __init__ runs
            raise AttributeError("access_token")
        return source()

    def fetch_access_token(self) -> dict[str, Any]:
        """gettoken under our API base, with a timeout (wechatpy hard-codes the official URL)."""
        res = self._http.get(self.API_BASE_URL + "gettoken", timeout=self.timeout,
                             params={"corpid": self.corp_id, "corpsecret": self.secret})
        try:
            res.raise_for_status()
        except requests.RequestException as exc:
            raise WeChatClientException(None, None, client=self, request=exc.request,
                                        response=exc.response) from exc
        return self._handle_result(res)


class WeComAPI:
    """The WeCom API for this app's agent; the access token is shared through Redis (or this process)."""

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None,
                 timeout: float = TIMEOUT_S, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.redis = redis_client
        self.clock = clock
        self.client = _Client(settings, self.access_token, timeout)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)  # a connection per thread in flight
        self.client._http.mount("http://", adapter)
        self.client._http.mount("https://", adapter)
        identity = f"{settings.wecom_api_base}|{settings.wecom_corp_id}|{settings.wecom_secret}"
        self.token = SharedToken("wecom", identity, self._fetch_token, redis_client, clock, WeComAPIError)
        self._token_key = self.token.key
        digest = self.token.key.rsplit(":", 1)[1]
        self.rate = CallRate(settings.wecom_calls_per_minute, f"czk:wecom:rate:{digest}", redis_client)

    def access_token(self) -> str:
        """A valid access token: the shared one, or a fresh one fetched by exactly one process."""
        return self.token.get()

    def _fetch_token(self) -> dict[str, Any]:
        log.info("fetching a WeCom access token from %s", self.settings.wecom_api_base)
        return self._guarded(self.client.fetch_access_token)

    # ── calls ────────────────────────────────────────────────────────────────

    def _guarded(self, call: Callable[[], Any]) -> dict[str, Any]:
        self.rate.acquire()
        try:
            result = call()
        except WeChatClientException as exc:
            status = exc.response.status_code if exc.response is not None else None
            errcode = int(exc.errcode) if exc.errcode is not None else None
            raise WeComAPIError(errcode, str(exc.errmsg or ""), status) from exc
        except requests.RequestException as exc:
            raise WeComAPIError(None, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            raise WeComAPIError(None, "the answer is not JSON")
        return result

    def post(self, endpoint: str, data: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST `data` to `endpoint` (relative to WECOM_API_BASE); one refresh-and-retry on a token error."""
        return self.token.call(lambda token: self._guarded(
            lambda: self.client.post(endpoint, params={**(params or {}), "access_token": token}, data=data)))

    def send_text(self, userids: list[str], content: str) -> dict[str, Any]:
        """Send a text message from the app to up to 1000 members (content ≤ 2048 bytes UTF-8)."""
        if not userids or len(userids) > MAX_RECIPIENTS:
            raise ValueError(f"send_text needs 1 to {MAX_RECIPIENTS} recipients, got {len(userids)}")
        if len(content.encode("utf-8")) > MAX_TEXT_BYTES:
            raise ValueError(f"text content is over {MAX_TEXT_BYTES} bytes")
        agent = self.settings.wecom_agent_id or ""
        return self.post("message/send", {
            "touser": "|".join(userids),
            "msgtype": "text",
            "agentid": int(agent) if agent.isdigit() else agent,
            "text": {"content": content},
            "safe": 0,
            "enable_duplicate_check": 1,
            "duplicate_check_interval": DUPLICATE_CHECK_MAX_S,
        })

    def get(self, endpoint: str, params: dict[str, Any]) -> dict[str, Any]:
        """GET `endpoint` (relative to WECOM_API_BASE); one refresh-and-retry on a token error."""
        return self.token.call(lambda token: self._guarded(
            lambda: self.client.get(endpoint, params={**params, "access_token": token})))

    def oauth_userid(self, code: str) -> str | None:
        """The member behind a web-authorisation code (`auth/getuserinfo`; a code works once, 5 minutes):
        their UserId, or None for someone who is not a member of the corp (WeCom answers an openid).
        A code WeCom refuses (reused, expired, made up) raises WeComAPIError 40029."""
        result = self.get("auth/getuserinfo", {"code": code})
        userid = result.get("userid") or result.get("UserId")  # the older user/getuserinfo spelt it UserId
        return str(userid) if userid else None

    def create_menu(self, menu: dict[str, Any]) -> dict[str, Any]:
        """Replace the app's menu (`{"button": [...]}`, WeCom's own shape): one menu per app, for every member."""
        return self.post("menu/create", menu, params={"agentid": self.settings.wecom_agent_id or ""})
