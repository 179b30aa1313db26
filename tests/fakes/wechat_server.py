"""What the local fakes of WeChat's HTTP APIs (tests/fakes/fake_wecom.py, fake_mp.py) share: a threaded
loopback server, the record of every call, injected faults (an errcode, an HTTP status, a delay, or an
answer held until `release()`), the tokens issued, and WeChat's JSON answers.

A fake subclasses `FakeWeChatServer` and says what its API is: `routes()` ((method, path) → handler of
params and body), `ERRMSG` (errcode → errmsg), `PREFIX` (the part of the URL path before an endpoint).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import EllipsisType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

HOLD_MAX_S = 60.0  # a held answer is given up after this even if nobody releases it

Route = Callable[[dict[str, str], Any], dict[str, Any]]


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str  # relative to the fake's PREFIX, e.g. "gettoken" or "cgi-bin/token"
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


class FakeWeChatServer:
    """A threaded HTTP server on a free loopback port answering as WeChat does."""

    PREFIX = "/"
    ERRMSG: dict[int, str] = {}
    NAME = "fake-wechat"
    HOLD_PATH: str | None = None  # what hold_next holds when not told
    BAD_TOKEN = 40001  # an access_token the server never issued or has forgotten

    def __init__(self, *, expires_in: int = 7200, latency: float = 0.0, keep_bodies: bool = True) -> None:
        self.expires_in = expires_in
        self.latency = latency  # seconds every call takes before it is handled
        self.keep_bodies = keep_bodies  # False: calls are recorded without their bodies
        self.calls: list[Call] = []
        self.tokens: dict[str, float] = {}  # token → expires at (time.time()); absent: not (or no longer) valid
        self.max_in_flight = 0  # the most calls it was serving at once
        self._in_flight = 0
        self._faults: list[Fault] = []
        self._held = threading.Semaphore(0)  # one per call processed whose answer is held
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def routes(self) -> dict[tuple[str, str], Route]:
        """(method, path) → the handler that answers it."""
        raise NotImplementedError

    # ── life cycle ───────────────────────────────────────────────────────────

    def start(self) -> Self:
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
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self.NAME, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API's base URL (what WECOM_API_BASE or MP_API_BASE should be set to)."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}{self.PREFIX}"

    # ── control and inspection ───────────────────────────────────────────────

    def fail_next(self, count: int = 1, *, errcode: int | None = None, http_status: int | None = None,
                  delay: float = 0.0, path: str | None = None) -> None:
        """Make the next `count` calls (to `path`, or any) answer `errcode`, or HTTP `http_status`, after `delay`."""
        with self._lock:
            self._faults.extend(Fault(errcode, http_status, delay, path) for _ in range(count))

    def hold_next(self, count: int = 1, *, path: str | None | EllipsisType = ...) -> None:
        """Process the next `count` calls (to `path`; HOLD_PATH when not given) as usual but hold their
        answers until `release()`."""
        where = self.HOLD_PATH if path is ... else path
        with self._lock:
            self._release.clear()
            self._faults.extend(Fault(path=where, hold=True) for _ in range(count))

    def wait_held(self, timeout: float = 30.0) -> bool:
        """Wait until a held call has been processed and is waiting to answer."""
        return self._held.acquire(timeout=timeout)

    def release(self) -> None:
        """Let every held answer go (to a caller that may be gone)."""
        self._release.set()

    def issue_token(self) -> str:
        """A new access token, valid `expires_in` seconds."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = time.time() + self.expires_in
        return token

    def token_error(self, params: dict[str, str]) -> dict[str, Any] | None:
        """The answer to a call whose `access_token` is missing (41001), unknown (BAD_TOKEN) or
        expired (42001); None for a good one."""
        token = params.get("access_token")
        if not token:
            return self.error(41001)
        with self._lock:
            expires_at = self.tokens.get(token)
        if expires_at is None:
            return self.error(self.BAD_TOKEN)
        if expires_at <= time.time():
            return self.error(42001)
        return None

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired (42001)."""
        with self._lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def revoke_tokens(self) -> None:
        """Forget every token issued so far (no longer valid, as after a newer one elsewhere)."""
        with self._lock:
            self.tokens.clear()

    def calls_to(self, path: str) -> int:
        """How many calls reached `path`."""
        with self._lock:
            return sum(1 for c in self.calls if c.path == path)

    # ── serving ──────────────────────────────────────────────────────────────

    def error(self, errcode: int, detail: str = "") -> dict[str, Any]:
        """WeChat's answer carrying `errcode`."""
        msg = self.ERRMSG.get(errcode, "error")
        return {"errcode": errcode, "errmsg": f"{msg}{', ' + detail if detail else ''}"}

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
        path = url.path.removeprefix(self.PREFIX)
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
                send(http, fault.http_status, b"injected failure", "text/plain")
                return
            if fault.errcode is not None:
                send_json(http, self.error(fault.errcode, "injected"))
                return
        route = self.routes().get((method, path))
        if route is None:
            send(http, 404, b"not found", "text/plain")
            return
        result = route(params, body)
        call.accepted = result.get("errcode", 0) == 0
        if fault is not None and fault.hold:
            self._held.release()
            self._release.wait(HOLD_MAX_S)
        send_json(http, result)


def send_json(http: BaseHTTPRequestHandler, result: dict[str, Any]) -> None:
    """Answer 200 with `result` as JSON."""
    send(http, 200, json.dumps(result, ensure_ascii=False).encode(), "application/json")


def send(http: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str) -> None:
    """Answer `status` with `data`; a client that gave up waiting (a timeout test) gets nothing."""
    try:
        http.send_response(status)
        http.send_header("Content-Type", f"{content_type}; charset=utf-8")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
