"""The Official Account (公众号) API client: every call under MP_API_BASE, one shared token, no hidden retries.

MP_API_BASE is the root up to the host's "/" (`https://api.weixin.qq.com/` unless set); `cgi-bin/…`
and `sns/…` are appended, the token call included, so tests point the whole client at a local fake.
The access token (`cgi-bin/token`, 7200 s) is shared through Redis and refreshed by one process at
a time (`wechat.token.SharedToken`, as WeCom's); 40001/40014/42001 refresh it once and retry. Every
request has a timeout. 45009 (over a frequency limit) and -1 (system busy) are worth trying later;
anything else is the caller's (the outbox's) to judge.

WeChat has no duplicate check for these messages, so an error says whether the request may have
reached WeChat (`outcome_unknown`: sent, and no answer came): such a message must not be sent again
blindly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from core.config import Settings
from wechat.token import SharedToken, WeChatAPIError

log = logging.getLogger(__name__)

OFFICIAL_MP_API = "https://api.weixin.qq.com/"
TIMEOUT_S = 5.0
POOL_SIZE = 32  # kept-alive connections, per client: more than the outbox's calls in flight
MAX_TEXT_BYTES = 2048  # a customer-service text message, as WeCom's text (UTF-8 bytes)

# Errcodes the outbox treats as final for one message.
NOT_FOLLOWING = 43004  # the follower unfollowed
OUT_OF_WINDOW = 45015  # no message from the follower within 48 hours: no customer-service message
OVER_CUSTOM_QUOTA = 45047  # over the customer-service messages allowed since the follower last wrote


class MpAPIError(WeChatAPIError):
    """An Official Account API call failed: non-zero errcode, HTTP error or no answer (errcode None)."""

    service = "Official Account"
    TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # invalid / not the latest / expired access_token
    BACKOFF_ERRORS = frozenset({45009, -1})  # over a frequency limit, system busy

    def __init__(self, errcode: int | None, errmsg: str, http_status: int | None = None,
                 outcome_unknown: bool = False) -> None:
        super().__init__(errcode, errmsg, http_status)
        self.outcome_unknown = outcome_unknown  # the request went out and no answer came

    @property
    def retryable(self) -> bool:
        """Worth trying again later; never a request whose outcome is unknown."""
        return not self.outcome_unknown and super().retryable


def _sent_maybe(exc: requests.RequestException) -> bool:
    """Whether a failed request may have reached WeChat: not when no connection was made."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return not isinstance(reason, NewConnectionError | ConnectTimeoutError)
    return isinstance(exc, requests.Timeout)


def api_base(settings: Settings) -> str:
    """MP_API_BASE with its trailing "/" (the official root when unset)."""
    base = settings.mp_api_base or OFFICIAL_MP_API
    return base if base.endswith("/") else base + "/"


class MpAPI:
    """The Official Account API for this account (MP_APP_ID, MP_APP_SECRET)."""

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None,
                 timeout: float = TIMEOUT_S, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.base = api_base(settings)
        self.timeout = timeout
        self.app_id = settings.mp_app_id or ""
        self.secret = settings.mp_app_secret or ""
        self.http = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.token = SharedToken("mp", f"{self.base}|{self.app_id}|{self.secret}", self._fetch_token,
                                 redis_client, clock, MpAPIError)

    # ── the wire ─────────────────────────────────────────────────────────────

    def _request(self, method: str, path: str, params: dict[str, str],
                 body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request under MP_API_BASE; its JSON answer when errcode is 0 (or absent), else MpAPIError."""
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        headers = {"Content-Type": "application/json; charset=utf-8"} if data is not None else None
        try:
            res = self.http.request(method, self.base + path, params=params, data=data, headers=headers,
                                    timeout=self.timeout)
        except requests.RequestException as exc:
            raise MpAPIError(None, type(exc).__name__, outcome_unknown=_sent_maybe(exc)) from exc
        if res.status_code != 200:
            raise MpAPIError(None, "HTTP error", res.status_code)
        try:
            result = res.json()
        except ValueError as exc:
            raise MpAPIError(None, "the answer is not JSON", res.status_code) from exc
        if not isinstance(result, dict):
            raise MpAPIError(None, "the answer is not a JSON object", res.status_code)
        errcode = result.get("errcode", 0)
        if errcode not in (0, "0"):
            try:
                code = int(errcode)
            except (TypeError, ValueError):
                code = None
            raise MpAPIError(code, str(result.get("errmsg") or ""))
        return result

    def _fetch_token(self) -> dict[str, Any]:
        log.info("fetching an Official Account access token from %s", self.base)
        return self._request("GET", "cgi-bin/token", {"grant_type": "client_credential", "appid": self.app_id,
                                                     "secret": self.secret})

    def access_token(self) -> str:
        """A valid access token: the shared one, or a fresh one fetched by exactly one process."""
        return self.token.get()

    def post(self, endpoint: str, data: dict[str, Any]) -> dict[str, Any]:
        """POST `data` to `cgi-bin/<endpoint>`; one refresh-and-retry on a token error."""
        return self.token.call(lambda token: self._request("POST", "cgi-bin/" + endpoint,
                                                           {"access_token": token}, data))

    # ── calls ────────────────────────────────────────────────────────────────

    def send_template(self, openid: str, template_id: str, data: dict[str, str],
                      url: str | None = None) -> dict[str, Any]:
        """A template message (`message/template/send`): `data` is keyword → value."""
        return self.post("message/template/send", template_payload(openid, template_id, data, url))

    def send_text(self, openid: str, content: str) -> dict[str, Any]:
        """A customer-service text message (accepted within 48 hours of the follower's last message)."""
        if len(content.encode("utf-8")) > MAX_TEXT_BYTES:
            raise ValueError(f"text content is over {MAX_TEXT_BYTES} bytes")
        return self.post("message/custom/send", text_payload(openid, content))

    def create_menu(self, menu: dict[str, Any]) -> dict[str, Any]:
        """Replace the account's menu (`{"button": [...]}`): the same for every follower."""
        return self.post("menu/create", menu)

    def oauth_openid(self, code: str) -> str:
        """The openid behind a web-authorisation code (`sns/oauth2/access_token`; a code works once)."""
        result = self._request("GET", "sns/oauth2/access_token", {
            "appid": self.app_id, "secret": self.secret, "code": code, "grant_type": "authorization_code"})
        openid = result.get("openid")
        if not openid:
            raise MpAPIError(None, "sns/oauth2/access_token answered without an openid")
        return str(openid)


def template_payload(openid: str, template_id: str, data: dict[str, str], url: str | None) -> dict[str, Any]:
    """The body of `message/template/send`."""
    body: dict[str, Any] = {"touser": openid, "template_id": template_id,
                            "data": {key: {"value": value} for key, value in data.items()}}
    if url:
        body["url"] = url
    return body


def text_payload(openid: str, content: str) -> dict[str, Any]:
    """The body of a `message/custom/send` text message."""
    return {"touser": openid, "msgtype": "text", "text": {"content": content}}


def endpoint_of(payload: dict[str, Any]) -> str:
    """Which call a stored payload is for."""
    return "message/template/send" if "template_id" in payload else "message/custom/send"
