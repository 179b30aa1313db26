"""A local fake of the WeCom API (gettoken, message/send, menu/create, auth/getuserinfo) over real HTTP,
for client, outbox and sign-in tests.

It checks what WeCom checks, answers with WeCom's errcodes, records every call (the app's menu, once
menu/create accepted one, is in `menu`), and fails on demand:

    with FakeWeCom() as fake:
        settings = ...(wecom_api_base=fake.base_url, wecom_corp_id=fake.corp_id,
                       wecom_secret=fake.secret, wecom_agent_id=str(fake.agent_id))
        fake.fail_next(1, errcode=42001, path="message/send")   # or http_status=500, or delay=2.0
        ...
        assert fake.calls_to("gettoken") == 1
        assert fake.received["wangfang"] == ["…"]

Like WeCom, it silently drops what exceeds 30 messages a minute or 1000 an hour
per member (errcode 0 all the same); `received` holds what was delivered and
`dropped` what was not. Like WeCom's duplicate check, a message/send with
`enable_duplicate_check: 1` does not deliver to a member content that member
received within `duplicate_check_interval` seconds (default 1800, at most
4 hours); errcode 0 all the same, the suppressed content is in `duplicates`.

Every call can take time, as WeCom's 20–100 ms do (`FakeWeCom(latency=0.03)`), and for a
benchmark of thousands of calls `keep_bodies=False` records calls without their bodies.

Web authorisation (`auth/getuserinfo`, what the pages' WeCom OAuth calls): `issue_code("zhangsan")` is
the code WeCom hands the redirect for a member, `issue_code(openid="o-guest")` for someone who is not
a member (answered with an openid, as WeCom does); a code works once, and an unknown, used or
expired code is 40029.

To crash a caller after WeCom took its message, hold the answer:

    fake.hold_next(path="message/send")   # the next call is delivered, its answer held
    fake.wait_held()                      # True once a call is delivered and waiting
    ... kill the caller ...
    fake.release()                        # answer (to nobody) and go on
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from typing import Any

from tests.fakes.fake_mp import menu_error
from tests.fakes.wechat_server import FakeWeChatServer, Route

PREFIX = "/cgi-bin/"
MAX_RECIPIENTS = 1000
MAX_TEXT_BYTES = 2048
MAX_TITLE_BYTES = 128
MAX_DESCRIPTION_BYTES = 512
PER_MINUTE, PER_HOUR = 30, 1000
DUPLICATE_CHECK_DEFAULT_S, DUPLICATE_CHECK_MAX_S = 1800, 4 * 3600
MAX_MENU_NAME_BYTES, MAX_SUB_MENU_NAME_BYTES = 16, 40  # menu/create: a button's name, a sub button's
CODE_TTL_S = 300  # an OAuth code unused this long has expired

ERRMSG = {
    0: "ok",
    40001: "invalid credential",
    40003: "invalid userid",
    40008: "invalid message type",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40016: "invalid button size",
    40017: "invalid button type",
    40018: "invalid button name size",
    40019: "invalid button key size",
    40023: "invalid sub button size",
    40024: "invalid sub button type",
    40025: "invalid sub button name size",
    40026: "invalid sub button key size",
    40027: "invalid sub button url size",
    40055: "invalid button url",
    40029: "invalid code",
    40056: "invalid agentid",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    41008: "missing code",
    41009: "missing message body",
    42001: "access_token expired",
    44004: "empty content",
    45002: "content size out of limit",
    47001: "data format error",
    48002: "api forbidden",
}


class FakeWeCom(FakeWeChatServer):
    """A threaded HTTP server speaking the bits of the WeCom API the service uses."""

    PREFIX = PREFIX
    ERRMSG = ERRMSG
    NAME = "fake-wecom"
    BAD_TOKEN = 40014  # WeCom's "invalid access_token"
    HOLD_PATH = "message/send"

    def __init__(self, corp_id: str = "wwfake0000corp", secret: str = "fake-secret-0123456789",
                 agent_id: int = 1000002, expires_in: int = 7200, known_users: set[str] | None = None,
                 latency: float = 0.0, keep_bodies: bool = True) -> None:
        super().__init__(expires_in=expires_in, latency=latency, keep_bodies=keep_bodies)
        self.corp_id = corp_id
        self.secret = secret
        self.agent_id = agent_id
        self.known_users = known_users  # None: every userid exists
        self.received: dict[str, list[str]] = defaultdict(list)  # userid -> delivered contents
        self.dropped: dict[str, list[str]] = defaultdict(list)  # userid -> silently dropped contents
        self.duplicates: dict[str, list[str]] = defaultdict(list)  # userid -> contents the duplicate check kept back
        self._deliveries: dict[str, list[float]] = defaultdict(list)
        self._delivered: dict[str, list[tuple[str, float]]] = defaultdict(list)  # userid -> (content key, at)
        self.menu: dict[str, Any] | None = None  # the app's menu, once menu/create accepted one
        # OAuth code → ("userid" | "openid", who, issued at); None once used
        self.codes: dict[str, tuple[str, str, float] | None] = {}

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("GET", "gettoken"): lambda params, _body: self._gettoken(params),
            ("POST", "message/send"): self._message_send,
            ("POST", "menu/create"): self._menu_create,
            ("GET", "auth/getuserinfo"): lambda params, _body: self._getuserinfo(params),
        }

    # ── control and inspection ───────────────────────────────────────────────

    def issue_code(self, userid: str | None = None, *, openid: str | None = None, age: float = 0.0) -> str:
        """A web-authorisation code, as WeCom hands one to the redirect: for the member `userid`, or for
        a non-member (`openid`); `age` seconds old (over CODE_TTL_S: expired)."""
        if (userid is None) == (openid is None):
            raise ValueError("issue_code needs a userid or an openid")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.codes[code] = ("userid", userid, time.time() - age) if userid is not None else \
                ("openid", str(openid), time.time() - age)
        return code

    def delivery_times(self) -> dict[str, list[float]]:
        """When each member was delivered a message (time.time()), over the last hour."""
        with self._lock:
            return {user: list(times) for user, times in self._deliveries.items()}

    def sent_messages(self) -> list[dict[str, Any]]:
        """The bodies of the message/send calls that were accepted (errcode 0)."""
        with self._lock:
            return [c.body for c in self.calls if c.path == "message/send" and c.accepted]

    # ── the API ──────────────────────────────────────────────────────────────

    def _gettoken(self, params: dict[str, str]) -> dict[str, Any]:
        if not params.get("corpid"):
            return self.error(41002)
        if not params.get("corpsecret"):
            return self.error(41004)
        if params["corpid"] != self.corp_id:
            return self.error(40013)
        if params["corpsecret"] != self.secret:
            return self.error(40001)
        token = self.issue_token()
        return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}

    def _message_send(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        refused = self.token_error(params)
        if refused is not None:
            return refused
        if body is None:
            return self.error(41009)
        if not isinstance(body, dict):
            return self.error(47001)
        if str(body.get("agentid")) != str(self.agent_id):
            return self.error(40056)
        users = [u for u in str(body.get("touser") or "").split("|") if u]
        if not users and not body.get("toparty") and not body.get("totag"):
            return self.error(40003, "no recipient")
        if len(users) > MAX_RECIPIENTS:
            return self.error(40003, f"more than {MAX_RECIPIENTS} recipients")
        content, refused = self._content(body)
        if refused is not None:
            return refused
        invalid = [u for u in users if self.known_users is not None and u not in self.known_users]
        now = time.time()
        check = str(body.get("enable_duplicate_check", 0)) == "1"
        try:
            interval = float(body.get("duplicate_check_interval") or DUPLICATE_CHECK_DEFAULT_S)
        except (TypeError, ValueError):
            return self.error(47001, "duplicate_check_interval")
        interval = min(interval, DUPLICATE_CHECK_MAX_S)
        key = f"{body.get('msgtype')}:{content}"
        with self._lock:
            for user in users:
                if user in invalid:
                    continue
                if check and any(k == key and now - at < interval for k, at in self._delivered[user]):
                    self.duplicates[user].append(content)  # WeCom's duplicate check: not delivered again
                    continue
                recent = [t for t in self._deliveries[user] if now - t < 3600]
                if sum(1 for t in recent if now - t < 60) >= PER_MINUTE or len(recent) >= PER_HOUR:
                    self.dropped[user].append(content)  # WeCom drops the excess silently
                else:
                    recent.append(now)
                    self.received[user].append(content)
                    self._delivered[user] = [(k, at) for k, at in self._delivered[user]
                                             if now - at < DUPLICATE_CHECK_MAX_S] + [(key, now)]
                self._deliveries[user] = recent
        return {"errcode": 0, "errmsg": "ok", "invaliduser": "|".join(invalid),
                "msgid": secrets.token_hex(12)}

    def _menu_create(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        refused = self.token_error(params)
        if refused is not None:
            return refused
        if params.get("agentid") != str(self.agent_id):
            return self.error(40056)
        if not isinstance(body, dict):
            return self.error(47001)
        errcode = menu_error(body, MAX_MENU_NAME_BYTES, MAX_SUB_MENU_NAME_BYTES)
        if errcode:
            return self.error(errcode)
        with self._lock:
            self.menu = body
        return {"errcode": 0, "errmsg": "ok"}

    def _getuserinfo(self, params: dict[str, str]) -> dict[str, Any]:
        refused = self.token_error(params)
        if refused is not None:
            return refused
        code = params.get("code") or ""
        if not code:
            return self.error(41008)
        with self._lock:
            found = self.codes.get(code)
            if found is None:  # unknown, or used already
                return self.error(40029)
            self.codes[code] = None  # once, whatever comes next
        kind, who, issued = found
        if time.time() - issued > CODE_TTL_S:
            return self.error(40029)
        if kind == "userid":
            return {"errcode": 0, "errmsg": "ok", "userid": who}
        return {"errcode": 0, "errmsg": "ok", "openid": who, "external_userid": "wm" + secrets.token_hex(8)}

    def _content(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        kind = body.get("msgtype")
        part = body.get(kind) if isinstance(kind, str) else None
        if kind not in ("text", "markdown", "textcard") or not isinstance(part, dict):
            return "", self.error(40008)
        if kind == "textcard":
            title, description = str(part.get("title") or ""), str(part.get("description") or "")
            if not title or not description or not part.get("url"):
                return "", self.error(44004)
            if len(title.encode()) > MAX_TITLE_BYTES or len(description.encode()) > MAX_DESCRIPTION_BYTES:
                return "", self.error(45002)
            return f"{title}\n{description}", None
        content = str(part.get("content") or "")
        if not content:
            return "", self.error(44004)
        if len(content.encode()) > MAX_TEXT_BYTES:
            return "", self.error(45002)
        return content, None
