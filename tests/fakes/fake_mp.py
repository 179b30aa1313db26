"""A local fake of the Official Account API over real HTTP (token, custom and template messages,
menu/create, sns/oauth2/access_token), for client and outbox tests.

It checks what WeChat checks and answers with WeChat's errcodes:

    with FakeMp(templates={"TPL_WEEKLY"}) as fake:
        settings = ...(mp_api_base=fake.base_url, mp_app_id=fake.app_id, mp_app_secret=fake.secret)
        fake.follower_wrote("o-zhang", at=time.time() - 3600)   # opens the 48-hour window
        fake.unfollow("o-li")                                   # 43004 from now on
        fake.fail_next(1, errcode=45047, path="cgi-bin/message/custom/send")   # or http_status=500, delay=2.0
        code = fake.issue_code("o-zhang")                       # for sns/oauth2/access_token
        ...
        assert fake.calls_to("cgi-bin/token") == 1
        assert fake.received["o-zhang"] == ["…"]

- token: appid (40013) and secret (40125) checked; `expire_tokens()` makes every token so far
  answer 42001, `revoke_tokens()` 40001 (as a token that is no longer the latest).
- message/custom/send: text only; accepted only within 48 hours of the follower's last message
  (`follower_wrote`), else 45015; an unfollowed openid 43004.
- message/template/send: a template id not in `templates` is 40037; an unfollowed openid 43004.
  `received[openid]` holds the data values joined by newlines; `messages[openid]` the bodies.
- menu/create: WeChat's limits: 1–3 buttons (40016), 1–5 sub buttons (40023), a name at most 16
  bytes (40018) or 60 for a sub button (40025), a known type (40017 / 40024), a click key of at
  most 128 bytes (40019 / 40026), a view url (40055 / 40027). `menu` holds the menu accepted.
- sns/oauth2/access_token: codes issued by `issue_code`, each usable once (40163 when used again),
  anything else 40029.

To crash a caller after WeChat took its message, hold the answer (as FakeWeCom does):
`hold_next(path=…)`, `wait_held()`, `release()`.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from typing import Any

from tests.fakes.wechat_server import FakeWeChatServer, Route

CUSTOM_WINDOW_S = 48 * 3600
MAX_TEXT_BYTES = 2048
MAX_BUTTONS, MAX_SUB_BUTTONS = 3, 5
MAX_NAME_BYTES, MAX_SUB_NAME_BYTES = 16, 60
MAX_KEY_BYTES, MAX_URL_BYTES = 128, 1024
BUTTON_TYPES = {"click", "view", "scancode_push", "scancode_waitmsg", "pic_sysphoto", "pic_photo_or_album",
                "pic_weixin", "location_select", "media_id", "view_limited", "miniprogram", "article_id",
                "article_view_limited"}

ERRMSG = {
    -1: "system error",
    0: "ok",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40008: "invalid message type",
    40013: "invalid appid",
    40016: "invalid button size",
    40017: "invalid button type",
    40018: "invalid button name size",
    40019: "invalid button key size",
    40023: "invalid sub button size",
    40024: "invalid sub button type",
    40025: "invalid sub button name size",
    40026: "invalid sub button key size",
    40027: "invalid sub button url size",
    40029: "invalid code",
    40037: "invalid template_id",
    40055: "invalid button url",
    40125: "invalid appsecret",
    40163: "code been used",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41009: "missing body",
    42001: "access_token expired",
    43004: "require subscribe",
    44004: "empty content",
    45002: "content size out of limit",
    45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    47001: "data format error",
}


class FakeMp(FakeWeChatServer):
    """A threaded HTTP server speaking the bits of the Official Account API the service uses."""

    ERRMSG = ERRMSG
    NAME = "fake-mp"

    def __init__(self, app_id: str = "wxfake0000000app", secret: str = "fake-mp-secret-0123456789",
                 templates: set[str] | None = None, expires_in: int = 7200) -> None:
        super().__init__(expires_in=expires_in)
        self.app_id = app_id
        self.secret = secret
        self.templates = set(templates or ())
        self.received: dict[str, list[str]] = defaultdict(list)
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.menu: dict[str, Any] | None = None
        self.last_wrote: dict[str, float] = {}
        self.unfollowed: set[str] = set()
        self.codes: dict[str, str | None] = {}  # code → openid (None once used)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("GET", "cgi-bin/token"): self._token,
            ("POST", "cgi-bin/message/custom/send"): self._custom_send,
            ("POST", "cgi-bin/message/template/send"): self._template_send,
            ("POST", "cgi-bin/menu/create"): self._menu_create,
            ("GET", "sns/oauth2/access_token"): self._oauth,
        }

    # ── control and inspection ───────────────────────────────────────────────

    def follower_wrote(self, openid: str, at: float | None = None) -> None:
        """The follower sent the account a message at `at` (time.time()): the 48-hour window opens."""
        with self._lock:
            self.last_wrote[openid] = time.time() if at is None else at
            self.unfollowed.discard(openid)

    def unfollow(self, openid: str) -> None:
        """The follower left: every message to them is 43004."""
        with self._lock:
            self.unfollowed.add(openid)

    def issue_code(self, openid: str) -> str:
        """A web-authorisation code for `openid`, as WeChat hands one to the redirect."""
        code = secrets.token_hex(16)
        with self._lock:
            self.codes[code] = openid
        return code

    # ── the API ──────────────────────────────────────────────────────────────

    def _credentials(self, params: dict[str, str]) -> dict[str, Any] | None:
        if not params.get("appid"):
            return self.error(41002)
        if not params.get("secret"):
            return self.error(41004)
        if params["appid"] != self.app_id:
            return self.error(40013)
        if params["secret"] != self.secret:
            return self.error(40125)
        return None

    def _token(self, params: dict[str, str], _body: Any) -> dict[str, Any]:
        if params.get("grant_type") != "client_credential":
            return self.error(40002)
        refused = self._credentials(params)
        if refused is not None:
            return refused
        token = self.issue_token()
        return {"access_token": token, "expires_in": self.expires_in}

    def _recipient(self, params: dict[str, str], body: Any) -> tuple[str, dict[str, Any] | None]:
        refused = self.token_error(params)
        if refused is not None:
            return "", refused
        if body is None:
            return "", self.error(41009)
        if not isinstance(body, dict):
            return "", self.error(47001)
        openid = str(body.get("touser") or "")
        if not openid:
            return "", self.error(40003)
        if openid in self.unfollowed:
            return openid, self.error(43004)
        return openid, None

    def _custom_send(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        openid, refused = self._recipient(params, body)
        if refused is not None:
            return refused
        text = body.get("text")
        if body.get("msgtype") != "text" or not isinstance(text, dict):
            return self.error(40008)
        content = str(text.get("content") or "")
        if not content:
            return self.error(44004)
        if len(content.encode()) > MAX_TEXT_BYTES:
            return self.error(45002)
        with self._lock:
            wrote = self.last_wrote.get(openid)
            if wrote is None or time.time() - wrote >= CUSTOM_WINDOW_S:
                return self.error(45015)
            self.received[openid].append(content)
            self.messages[openid].append(body)
        return {"errcode": 0, "errmsg": "ok"}

    def _template_send(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        openid, refused = self._recipient(params, body)
        if refused is not None:
            return refused
        if body.get("template_id") not in self.templates:
            return self.error(40037)
        data = body.get("data")
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "value" in v for v in data.values()):
            return self.error(47001)
        with self._lock:
            self.received[openid].append("\n".join(str(v["value"]) for v in data.values()))
            self.messages[openid].append(body)
        return {"errcode": 0, "errmsg": "ok", "msgid": secrets.randbelow(10**12)}

    def _menu_create(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        refused = self.token_error(params)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return self.error(47001)
        errcode = menu_error(body, MAX_NAME_BYTES, MAX_SUB_NAME_BYTES)
        if errcode:
            return self.error(errcode)
        with self._lock:
            self.menu = body
        return {"errcode": 0, "errmsg": "ok"}

    def _oauth(self, params: dict[str, str], _body: Any) -> dict[str, Any]:
        if params.get("grant_type") != "authorization_code":
            return self.error(40002)
        refused = self._credentials(params)
        if refused is not None:
            return refused
        code = params.get("code") or ""
        with self._lock:
            if code not in self.codes:
                return self.error(40029)
            openid = self.codes[code]
            if openid is None:
                return self.error(40163)
            self.codes[code] = None
        return {"access_token": secrets.token_urlsafe(24), "expires_in": 7200,
                "refresh_token": secrets.token_urlsafe(24), "openid": openid, "scope": "snsapi_base"}




def menu_error(body: dict[str, Any], name_bytes: int, sub_name_bytes: int) -> int:
    """WeChat's errcode for a menu body it would refuse (0: accepted). Shared with FakeWeCom's
    menu/create, whose limits are the same but for a sub button's name."""
    buttons = body.get("button")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
        return 40016
    for button in buttons:
        if not isinstance(button, dict):
            return 47001
        if not 1 <= len(str(button.get("name") or "").encode()) <= name_bytes:
            return 40018
        subs = button.get("sub_button")
        if subs:
            if not isinstance(subs, list) or len(subs) > MAX_SUB_BUTTONS:
                return 40023
            for sub in subs:
                if not isinstance(sub, dict):
                    return 47001
                if not 1 <= len(str(sub.get("name") or "").encode()) <= sub_name_bytes:
                    return 40025
                errcode = _action_error(sub, 40024, 40026, 40027)
                if errcode:
                    return errcode
        else:
            errcode = _action_error(button, 40017, 40019, 40055)
            if errcode:
                return errcode
    return 0


def _action_error(button: dict[str, Any], bad_type: int, bad_key: int, bad_url: int) -> int:
    kind = button.get("type")
    if kind not in BUTTON_TYPES:
        return bad_type
    if kind == "view":
        url = str(button.get("url") or "")
        return bad_url if not url or len(url.encode()) > MAX_URL_BYTES else 0
    if kind in ("click",) or kind.startswith(("scancode", "pic_", "location")):
        key = str(button.get("key") or "")
        return bad_key if not key or len(key.encode()) > MAX_KEY_BYTES else 0
    return 0
