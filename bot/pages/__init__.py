"""The pages (H5, PRODUCT.md §4.2): the card, the class and the dashboard, with charts drawn on the
server, for WeChat's browser on a phone.

Routes: `/h5/card` (the viewer's own card; a parent's: the child's), `/h5/card/<学号>` (staff, within
their scope), `/h5/class/<班级编号>`, `/h5/dashboard` (院领导: the college; 系部主任: their department),
`/h5/static/…` (the stylesheet: nothing comes from another host), `/h5/auth/wecom` and `/h5/auth/mp`
(WeChat's OAuth, with their `/callback`). Who may see what is models/authz.py's, exactly as in chat;
the numbers are the chat card's (models/cards.py) and the digest's (models/digest). Signing in:
bot/pages/auth.py; a page opened without a session goes through the OAuth of the configured channel.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from sqlalchemy.orm import Session

from bot.pages import auth, charts
from bot.pages import views as data
from core.config import ROOT
from core.render import _num, _signed
from models.authz import Actor
from models.service import Service
from wechat.token import WeChatAPIError

pages = Blueprint("pages", __name__, url_prefix="/h5", template_folder=str(ROOT / "templates"),
                  static_folder="static", static_url_path="/static")


@pages.app_template_filter("num")
def _num_filter(value: float | None) -> str:
    return _num(value)


@pages.app_template_filter("signed")
def _signed_filter(value: float | None) -> str:
    return _signed(value)


def _service() -> Service:
    return current_app.extensions["czk"]


def page(status: int, template: str, **context: object) -> Response:
    """An HTML page, never cached (it shows one person's data), never sent on as a Referer."""
    response = Response(render_template(template, charts=charts, **context), status=status,
                        mimetype="text/html")
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return response


@pages.before_request
def _link_sign_in() -> Response | None:
    """A link from a message (`?t=TOKEN`): check it, start the session, drop the token from the address."""
    if request.endpoint == "pages.static" or "t" not in request.args:
        return None
    settings = _service().settings
    try:
        channel, userid = auth.read_link(settings, request.args["t"])
    except auth.LinkRefused as exc:
        return page(403, "pages/denied.html", reason="expired" if exc.expired else "invalid",
                    hours=settings.page_link_hours)
    return auth.sign_in(settings, channel, userid, auth.path_without_token())


def _viewer() -> auth.Viewer | Response:
    """The signed-in viewer, identified again from the roster; else the page that says what to do."""
    service = _service()
    found = auth.session_viewer(service.settings)
    if found is None:
        channel = auth.oauth_channel_for(service.settings, request.user_agent.string)
        if channel is None:
            return page(401, "pages/signin.html")
        response = redirect(url_for("pages.oauth_start", channel=channel, next=auth.path_without_token()), 302)
        response.headers["Cache-Control"] = "no-store"
        return response
    actor = auth.identify(service, *found)
    if actor is None:
        return auth.sign_out(page(403, "pages/denied.html", reason="unknown", hours=0))
    return auth.Viewer(found[0], found[1], actor)


def _denied(reason: str, status: int = 403) -> Response:
    return page(status, "pages/denied.html", reason=reason, hours=0)


# ── signing in through WeChat (OAuth) ────────────────────────────────────────


@pages.get("/auth/<channel>")
def oauth_start(channel: str) -> Response:
    """`/h5/auth/wecom?next=PATH` or `/h5/auth/mp?next=PATH`: off to WeChat's authorize page."""
    settings = _service().settings
    if channel not in auth.oauth_channels(settings):
        return page(404, "pages/signin.html")
    next_path = auth.safe_next(request.args.get("next"))
    if next_path is None:
        return _denied("bad_next", 400)
    return auth.start_oauth(settings, channel, next_path)


@pages.get("/auth/<channel>/callback")
def oauth_callback(channel: str) -> Response:
    """WeChat sends the browser back with `code` and `state`: the state must be this browser's, the code
    one WeChat confirms (once), the person one the roster (or a binding) knows; then the page asked for."""
    service = _service()
    settings = service.settings
    if channel not in auth.oauth_channels(settings):
        return page(404, "pages/signin.html")
    next_path = auth.oauth_next(settings, channel, request.args.get("state", ""))
    code = request.args.get("code", "")
    if next_path is None or not code:
        return auth.forget_oauth(_denied("state", 400))
    if len(code.encode()) > auth.MAX_CODE_BYTES:
        return auth.forget_oauth(_denied("code"))
    try:
        who = auth.exchange_code(current_app, settings, channel, code)
    except WeChatAPIError as exc:
        # WeChat refused the code (used, expired, not its own): 403; no answer or busy: try again later.
        unavailable = exc.errcode is None or exc.retryable
        return auth.forget_oauth(_denied("unavailable", 503) if unavailable else _denied("code"))
    if who is None:
        return auth.forget_oauth(_denied("not_member"))
    if auth.identify(service, channel, who) is None:
        return auth.forget_oauth(_denied("mp_unbound" if channel == "mp" else "unknown"))
    return auth.forget_oauth(auth.sign_in(settings, channel, who, next_path))


def _shown(template: str, build: Callable[[Service, Session, Actor], dict | str | None],
           missing: Callable[[Actor], Response] | None = None) -> Response:
    """A page for the signed-in viewer: `build` gives its values, or the reason it is refused (a 403
    page), or nothing / "not_found" (`missing`'s page)."""
    viewer = _viewer()
    if isinstance(viewer, Response):
        return viewer
    service = _service()
    with service.sessions() as session:
        found = build(service, session, viewer.actor)
        if missing is not None and found in (None, "not_found"):
            return missing(viewer.actor)
        if isinstance(found, str):
            return _denied(found)
        assert found is not None
        return page(200, template, **found)


@pages.get("/card")
def own_card() -> Response:
    """The viewer's own card; a parent's: the child's (never a sensitive point)."""
    return _shown("pages/card.html", data.own_card,
                  lambda actor: page(404, "pages/card_usage.html", viewer=actor))


@pages.get("/card/<student_no>")
def student_card(student_no: str) -> Response:
    """A student's card within the viewer's scope (a student: only their own)."""
    return _shown("pages/card.html", lambda svc, session, actor: data.card_of(svc, session, actor, student_no),
                  lambda _actor: page(404, "pages/not_found.html", token=student_no, kind="student"))


@pages.get("/class/<code>")
def class_page(code: str) -> Response:
    """A class card, the spread of its students' totals and who is behind on data entry."""
    return _shown("pages/class.html", lambda svc, session, actor: data.class_of(svc, session, actor, code),
                  lambda _actor: page(404, "pages/not_found.html", token=code, kind="class"))


@pages.get("/dashboard")
def dashboard() -> Response:
    """The weekly digest as charts: 院领导 the college, 系部主任 their department; anyone else 403."""
    return _shown("pages/dashboard.html", data.dashboard)
