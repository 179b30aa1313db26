"""Who is looking at a page: signed links, WeChat's web authorisation (OAuth), the page session, and
the viewer re-identified per request.

Three ways in (PRODUCT.md §4.2), each ending in `sign_in(channel, userid)`, which sets the session
cookie (HttpOnly, SameSite=Lax, signed with SECRET_KEY, PAGE_SESSION_HOURS) and redirects to the
page asked for:
1. A link in a chat message carries `?t=TOKEN`, made by `page_link` for one viewer (channel + userid)
   and valid PAGE_LINK_HOURS; opening it signs in and redirects to the same address without the
   token, so it is neither bookmarked nor sent on as a Referer. The links themselves are made and read
   by models/page_links.py (chat answers and pushes make them).
2. WeCom OAuth, 3. Official Account OAuth: `/h5/auth/<channel>?next=PATH` redirects to WeChat's
   authorize page with a random `state`, which a short-lived signed cookie (OAUTH_COOKIE, HttpOnly,
   path /h5/auth) binds to this browser together with PATH; WeChat sends the browser back to
   `/h5/auth/<channel>/callback?code&state`, where the state must be the cookie's (else 400) and the
   code is exchanged once with WeChat (`auth/getuserinfo` → the member's UserId; `sns/oauth2/
   access_token` → the follower's openid, looked up among the bindings). PATH is only ever a page
   path on this site (`safe_next`): signing in never redirects anywhere else.
The cookie holds only the channel and the userid: on every request the viewer is looked up again in
the roster (a person who left it, or lost a class, loses the page at once).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

import redis
from flask import Flask, Response, redirect, request
from itsdangerous import BadData, URLSafeTimedSerializer

from core.config import Settings
from models.authz import Actor
from models.binding import follower_identity
from models.page_links import LINK_SALT, LinkRefused, page_link, read_link, viewer_of
from models.service import Service
from wechat.mp_api import MpAPI
from wechat.wecom_api import WeComAPI

SESSION_SALT = "page-session"
COOKIE = "czk_page"
OAUTH_SALT = "page-oauth"
OAUTH_COOKIE = "czk_oauth"
OAUTH_PATH = "/h5/auth"
OAUTH_SECONDS = 600  # WeChat's codes live 5 minutes: a sign-in not finished in 10 starts again
AUTHORIZE_URL = "https://open.weixin.qq.com/connect/oauth2/authorize"
DEFAULT_NEXT = "/h5/card"
MAX_CODE_BYTES = 512  # WeCom's and WeChat's codes are at most this long


def _signer(secret_key: str, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=salt)


def sign_in(settings: Settings, channel: str, userid: str, next_path: str) -> Response:
    """Start a page session for (channel, userid) and go to `next_path` (a path on this site)."""
    if not next_path.startswith("/") or next_path.startswith("//"):
        next_path = "/h5/card"
    response = redirect(next_path, code=302)
    response.set_cookie(
        COOKIE, _signer(settings.secret_key, SESSION_SALT).dumps({"c": channel, "u": userid}),
        max_age=settings.page_session_hours * 3600, path="/h5", httponly=True, samesite="Lax",
        secure=settings.public_base_url.startswith("https://"))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def sign_out(response: Response) -> Response:
    """Forget the page session (a viewer the roster no longer knows)."""
    response.delete_cookie(COOKIE, path="/h5")
    return response


def session_viewer(settings: Settings) -> tuple[str, str] | None:
    """(channel, userid) of the request's page session; None without a valid, unexpired one."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        return viewer_of(_signer(settings.secret_key, SESSION_SALT).loads(
            value, max_age=settings.page_session_hours * 3600))
    except BadData:
        return None


def path_without_token() -> str:
    """The request's path and query, the link token left out."""
    rest = [(k, v) for k, vs in request.args.lists() if k != "t" for v in vs]
    return request.path + (f"?{urlencode(rest)}" if rest else "")


@dataclass(frozen=True)
class Viewer:
    """The person looking at a page, as the roster knows them now."""

    channel: str
    userid: str
    actor: Actor


def identify(service: Service, channel: str, userid: str) -> Actor | None:
    """The viewer's Actor from the roster now (None: unknown or ambiguous), as chat identifies a sender."""
    if channel == "mp":
        return identify_follower(service, userid)
    directory = service.directory.get(service.sessions)
    # A console link was made for whoever the console spoke as (a 工号 or 学号 works there too).
    return directory.identify(userid, console_user="h5" if channel == "console" else None).actor


def identify_follower(service: Service, openid: str) -> Actor | None:
    """The Official Account follower bound to `openid` (a student, or a parent whose `parent_of`
    names the child), by models/binding.py; an unbound follower sees no page (None)."""
    with service.sessions() as session:
        actor = follower_identity(session, openid)
    return None if actor.is_unbound_follower else actor


# ── WeChat's web authorisation (OAuth) ─────────────────────────────────────


def oauth_channels(settings: Settings) -> tuple[str, ...]:
    """The channels whose OAuth can sign a viewer in, WeCom first: WeCom needs the corp id, the agent
    id and the secret (for `auth/getuserinfo`); the Official Account its app id and secret."""
    found = []
    if settings.wecom_corp_id and settings.wecom_agent_id and settings.wecom_secret:
        found.append("wecom")
    if settings.mp_app_id and settings.mp_app_secret:
        found.append("mp")
    return tuple(found)


def oauth_channel_for(settings: Settings, user_agent: str) -> str | None:
    """Where a page opened without a session sends the browser to sign in: WeCom's OAuth when it is
    configured, else the Official Account's; None when neither is. WeChat's own browser (its user agent
    says MicroMessenger and not wxwork, which WeCom's adds) cannot pass WeCom's OAuth, so it is sent to
    the Official Account's when both are configured."""
    channels = oauth_channels(settings)
    if not channels:
        return None
    in_wechat = "micromessenger" in user_agent.lower() and "wxwork" not in user_agent.lower()
    return "mp" if in_wechat and "mp" in channels else channels[0]


def safe_next(value: str | None) -> str | None:
    """Where to go after signing in: `value` when it is a page path on this site ("/h5/…"), DEFAULT_NEXT
    when none is given, None when it is anything else (another site, a scheme, a way out of /h5/, the
    sign-in itself): never an open redirect."""
    if not value:
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if (parts.scheme or parts.netloc or "\\" in value or any(ord(c) < 33 or ord(c) == 127 for c in value)
            or not parts.path.startswith("/h5/") or ".." in parts.path.split("/")
            or parts.path.startswith(OAUTH_PATH + "/") or parts.path == OAUTH_PATH):
        return None
    return value


def authorize_url(settings: Settings, channel: str, state: str) -> str:
    """WeChat's authorize address for `channel` (PRODUCT.md §4.2: parameters in this order; WeCom's
    with its agentid, the Official Account's without), coming back to our callback."""
    app_id = settings.wecom_corp_id if channel == "wecom" else settings.mp_app_id
    back = quote(f"{settings.public_base_url.rstrip('/')}{OAUTH_PATH}/{channel}/callback", safe="")
    agent = f"&agentid={quote(settings.wecom_agent_id or '', safe='')}" if channel == "wecom" else ""
    return (f"{AUTHORIZE_URL}?appid={quote(app_id or '', safe='')}&redirect_uri={back}&response_type=code"
            f"&scope=snsapi_base&state={state}{agent}#wechat_redirect")


def start_oauth(settings: Settings, channel: str, next_path: str) -> Response:
    """Send the browser to WeChat's authorize page with a new random state, kept (with `next_path`) in a
    signed cookie that only this browser holds."""
    state = secrets.token_hex(16)  # WeChat takes a-z, A-Z, 0-9 in a state, up to 128 bytes
    response = redirect(authorize_url(settings, channel, state), code=302)
    response.set_cookie(
        OAUTH_COOKIE, _signer(settings.secret_key, OAUTH_SALT).dumps({"s": state, "c": channel, "n": next_path}),
        max_age=OAUTH_SECONDS, path=OAUTH_PATH, httponly=True, samesite="Lax",
        secure=settings.public_base_url.startswith("https://"))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def oauth_next(settings: Settings, channel: str, state: str) -> str | None:
    """The page this browser's sign-in through `channel` is for, when `state` is the one it was sent to
    WeChat with (and not too old); else None."""
    value = request.cookies.get(OAUTH_COOKIE)
    if not value or not state:
        return None
    try:
        data = _signer(settings.secret_key, OAUTH_SALT).loads(value, max_age=OAUTH_SECONDS)
    except BadData:
        return None
    if not (isinstance(data, dict) and data.get("c") == channel and isinstance(data.get("s"), str)
            and isinstance(data.get("n"), str)):
        return None
    if not hmac.compare_digest(data["s"].encode(), state.encode()):
        return None
    return safe_next(data["n"])


def forget_oauth(response: Response) -> Response:
    """Drop the sign-in's state cookie: a state is good for one callback, whatever its outcome."""
    response.delete_cookie(OAUTH_COOKIE, path=OAUTH_PATH)
    return response


def exchange_code(app: Flask, settings: Settings, channel: str, code: str) -> str | None:
    """Who WeChat says the code is for: a WeCom member's UserId (None: not a member of the corp), or a
    follower's openid. Raises WeChatAPIError when WeChat refuses the code or does not answer."""
    clients = app.extensions.setdefault("czk_oauth", {})
    client = clients.get(channel)
    if client is None:
        shared = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5,
                                      socket_timeout=1) if settings.redis_url else None
        client = clients[channel] = WeComAPI(settings, shared) if channel == "wecom" else MpAPI(settings, shared)
    if isinstance(client, WeComAPI):
        return client.oauth_userid(code)
    return client.oauth_openid(code)


__all__ = ["COOKIE", "LINK_SALT", "OAUTH_COOKIE", "LinkRefused", "Viewer", "authorize_url", "exchange_code",
           "forget_oauth", "identify", "oauth_channel_for", "oauth_channels", "oauth_next", "page_link", "read_link",
           "safe_next", "session_viewer", "sign_in", "sign_out", "start_oauth"]
