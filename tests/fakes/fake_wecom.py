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

import json
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.fake_mp import menu_error

PREFIX = "/cgi-bin/"
MAX_RECIPIENTS = 1000
MAX_TEXT_BYTES = 2048
MAX_TITLE_BYTES = 128
MAX_DESCRIPTION_BYTES = 512
PER_MINUTE, PER_HOUR = 30, 1000
DUPLICATE_CHECK_DEFAULT_S, DUPLICATE_CHECK_MAX_S = 1800, 4 * 3600
MAX_MENU_NAME_BYTES, MAX_SUB_MENU_NAME_BYTES = 16, 40  # menu/create: a button's name, a sub button's
CODE_TTL_S = 300  # an OAuth code unused this long has expired
HOLD_MAX_S = 60.0  # a held answer is given up after this even if nobody releases it

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


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str  # relative to /cgi-bin/, e.g. "gettoken"
    params: dict[str, str]
    body: Any  # the decoded JSON body, or the raw text when it is not JSON
    at: float = field(default_factory=time.time)
    accepted: bool = False  # answered errcode 0


@dataclass
class Fault:
    """An injected failure for the next matching call."""

    errcode: int | None = None
    http_status: int | None = None
    delay: float = 0.0
    path: str | None = None  # None: any endpoint
    hold: bool = False  # process the call, then hold its answer until release()


class FakeWeCom:
    """A threaded HTTP server speaking the bits of the WeCom API the service uses."""

    def __init__(self, corp_id: str = "wwfake0000corp", secret: str = "fake-secret-0123456789",
                 agent_id: int = 1000002, expires_in: int = 7200, known_users: set[str] | None = None,
                 latency: float = 0.0, keep_bodies: bool = True) -> None:
        self.corp_id = corp_id
        self.latency = latency  # seconds every call takes before it is handled
        self.keep_bodies = keep_bodies  # False: calls are recorded without their bodies
        self.secret = secret
        self.agent_id = agent_id
        self.expires_in = expires_in
        self.known_users = known_users  # None: every userid exists
        self.calls: list[Call] = []
        self.tokens: dict[str, float] = {}  # token -> expires at (time.time())
        self.received: dict[str, list[str]] = defaultdict(list)  # userid -> delivered contents
        self.dropped: dict[str, list[str]] = defaultdict(list)  # userid -> silently dropped contents
        self.duplicates: dict[str, list[str]] = defaultdict(list)  # userid -> contents the duplicate check kept back
        self._deliveries: dict[str, list[float]] = defaultdict(list)
        self._delivered: dict[str, list[tuple[str, float]]] = defaultdict(list)  # userid -> (content key, at)
        self._held = threading.Semaphore(0)  # one per call delivered whose answer is held
        self._release = threading.Event()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0  # the most calls it was serving at once
        self.menu: dict[str, Any] | None = None  # the app's menu, once menu/create accepted one
        # OAuth code → ("userid" | "openid", who, issued at); None once used
        self.codes: dict[str, tuple[str, str, float] | None] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ── life cycle ───────────────────────────────────────────────────────────

    def start(self) -> FakeWeCom:
        """Listen on a free loopback port."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                fake._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._serve(self, "POST")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-wecom", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeWeCom:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What WECOM_API_BASE should be set to."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}{PREFIX}"

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

    def fail_next(self, count: int = 1, *, errcode: int | None = None, http_status: int | None = None,
                  delay: float = 0.0, path: str | None = None) -> None:
        """Make the next `count` calls (to `path`, or any) answer `errcode`, or HTTP `http_status`, after `delay`."""
        with self._lock:
            self._faults.extend(Fault(errcode, http_status, delay, path) for _ in range(count))

    def hold_next(self, count: int = 1, *, path: str | None = "message/send") -> None:
        """Deliver the next `count` calls (to `path`) as usual but hold their answers until `release()`."""
        with self._lock:
            self._release.clear()
            self._faults.extend(Fault(path=path, hold=True) for _ in range(count))

    def wait_held(self, timeout: float = 30.0) -> bool:
        """Wait until a held call has been processed (delivered) and is waiting to answer."""
        return self._held.acquire(timeout=timeout)

    def release(self) -> None:
        """Let every held answer go (to a caller that may be gone)."""
        self._release.set()

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired (42001)."""
        with self._lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def revoke_tokens(self) -> None:
        """Forget every token issued so far (40014)."""
        with self._lock:
            self.tokens.clear()

    def calls_to(self, path: str) -> int:
        """How many calls reached `path` (e.g. "gettoken", "message/send")."""
        with self._lock:
            return sum(1 for c in self.calls if c.path == path)

    def delivery_times(self) -> dict[str, list[float]]:
        """When each member was delivered a message (time.time()), over the last hour."""
        with self._lock:
            return {user: list(times) for user, times in self._deliveries.items()}

    def sent_messages(self) -> list[dict[str, Any]]:
        """The bodies of the message/send calls that were accepted (errcode 0)."""
        with self._lock:
            return [c.body for c in self.calls if c.path == "message/send" and c.accepted]

    # ── the API ──────────────────────────────────────────────────────────────

    def _serve(self, http: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._serve_one(http, method)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve_one(self, http: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(http.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = raw.decode("utf-8", "replace")
        path = url.path[len(PREFIX):] if url.path.startswith(PREFIX) else url.path
        call = Call(method, path, params, body if self.keep_bodies else None)
        with self._lock:
            self.calls.append(call)
            fault = next((f for f in self._faults if f.path in (None, path)), None)
            if fault is not None:
                self._faults.remove(fault)
        if self.latency:
            time.sleep(self.latency)
        if fault is not None and not fault.hold:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.http_status is not None:
                self._send(http, fault.http_status, b"injected failure", "text/plain")
                return
            if fault.errcode is not None:
                self._json(http, self._error(fault.errcode, "injected"))
                return
        if method == "GET" and path == "gettoken":
            result = self._gettoken(params)
        elif method == "POST" and path == "message/send":
            result = self._message_send(params, body)
        elif method == "POST" and path == "menu/create":
            result = self._menu_create(params, body)
        elif method == "GET" and path == "auth/getuserinfo":
            result = self._getuserinfo(params)
        else:
            self._send(http, 404, b"not found", "text/plain")
            return
        call.accepted = result.get("errcode") == 0
        if fault is not None and fault.hold:
            self._held.release()
            self._release.wait(HOLD_MAX_S)
        self._json(http, result)

    @staticmethod
    def _error(errcode: int, detail: str = "") -> dict[str, Any]:
        msg = ERRMSG.get(errcode, "error")
        return {"errcode": errcode, "errmsg": f"{msg}{', ' + detail if detail else ''}"}

    def _gettoken(self, params: dict[str, str]) -> dict[str, Any]:
        if not params.get("corpid"):
            return self._error(41002)
        if not params.get("corpsecret"):
            return self._error(41004)
        if params["corpid"] != self.corp_id:
            return self._error(40013)
        if params["corpsecret"] != self.secret:
            return self._error(40001)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = time.time() + self.expires_in
        return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}

    def _token_error(self, params: dict[str, str]) -> dict[str, Any] | None:
        token = params.get("access_token")
        if not token:
            return self._error(41001)
        with self._lock:
            expires_at = self.tokens.get(token)
        if expires_at is None:
            return self._error(40014)
        if expires_at <= time.time():
            return self._error(42001)
        return None

    def _message_send(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        refused = self._token_error(params)
        if refused is not None:
            return refused
        if body is None:
            return self._error(41009)
        if not isinstance(body, dict):
            return self._error(47001)
        if str(body.get("agentid")) != str(self.agent_id):
            return self._error(40056)
        users = [u for u in str(body.get("touser") or "").split("|") if u]
        if not users and not body.get("toparty") and not body.get("totag"):
            return self._error(40003, "no recipient")
        if len(users) > MAX_RECIPIENTS:
            return self._error(40003, f"more than {MAX_RECIPIENTS} recipients")
        content, refused = self._content(body)
        if refused is not None:
            return refused
        invalid = [u for u in users if self.known_users is not None and u not in self.known_users]
        now = time.time()
        check = str(body.get("enable_duplicate_check", 0)) == "1"
        try:
            interval = float(body.get("duplicate_check_interval") or DUPLICATE_CHECK_DEFAULT_S)
        except (TypeError, ValueError):
            return self._error(47001, "duplicate_check_interval")
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
        refused = self._token_error(params)
        if refused is not None:
            return refused
        if params.get("agentid") != str(self.agent_id):
            return self._error(40056)
        if not isinstance(body, dict):
            return self._error(47001)
        errcode = menu_error(body, MAX_MENU_NAME_BYTES, MAX_SUB_MENU_NAME_BYTES)
        if errcode:
            return self._error(errcode)
        with self._lock:
            self.menu = body
        return {"errcode": 0, "errmsg": "ok"}

    def _getuserinfo(self, params: dict[str, str]) -> dict[str, Any]:
        refused = self._token_error(params)
        if refused is not None:
            return refused
        code = params.get("code") or ""
        if not code:
            return self._error(41008)
        with self._lock:
            found = self.codes.get(code)
            if found is None:  # unknown, or used already
                return self._error(40029)
            self.codes[code] = None  # once, whatever comes next
        kind, who, issued = found
        if time.time() - issued > CODE_TTL_S:
            return self._error(40029)
        if kind == "userid":
            return {"errcode": 0, "errmsg": "ok", "userid": who}
        return {"errcode": 0, "errmsg": "ok", "openid": who, "external_userid": "wm" + secrets.token_hex(8)}

    def _content(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        kind = body.get("msgtype")
        part = body.get(kind) if isinstance(kind, str) else None
        if kind not in ("text", "markdown", "textcard") or not isinstance(part, dict):
            return "", self._error(40008)
        if kind == "textcard":
            title, description = str(part.get("title") or ""), str(part.get("description") or "")
            if not title or not description or not part.get("url"):
                return "", self._error(44004)
            if len(title.encode()) > MAX_TITLE_BYTES or len(description.encode()) > MAX_DESCRIPTION_BYTES:
                return "", self._error(45002)
            return f"{title}\n{description}", None
        content = str(part.get("content") or "")
        if not content:
            return "", self._error(44004)
        if len(content.encode()) > MAX_TEXT_BYTES:
            return "", self._error(45002)
        return content, None

    @staticmethod
    def _json(http: BaseHTTPRequestHandler, result: dict[str, Any]) -> None:
        FakeWeCom._send(http, 200, json.dumps(result, ensure_ascii=False).encode(), "application/json")

    @staticmethod
    def _send(http: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str) -> None:
        try:
            http.send_response(status)
            http.send_header("Content-Type", f"{content_type}; charset=utf-8")
            http.send_header("Content-Length", str(len(data)))
            http.end_headers()
            http.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test): nothing to answer
