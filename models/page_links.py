"""Signed links to the pages (H5): made for one viewer (channel + userid), valid PAGE_LINK_HOURS,
signed with SECRET_KEY (itsdangerous, salt "page-link"). Here, below handlers and scheduler, so that
chat answers and pushes can put a link in a message; bot/pages/auth.py reads them and signs in.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

from core.config import Settings

LINK_SALT = "page-link"
CHANNELS = ("wecom", "mp", "console")


def _signer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=LINK_SALT)


def link_token(settings: Settings, channel: str, userid: str) -> str:
    """A page-link token for one viewer."""
    if channel not in CHANNELS:
        raise ValueError(f"channel={channel!r}: expected one of {CHANNELS}")
    return _signer(settings.secret_key).dumps({"c": channel, "u": userid})


def page_link(settings: Settings, channel: str, userid: str, path: str) -> str:
    """The absolute address (PUBLIC_BASE_URL) of a page (e.g. "/h5/class/计算机2301"), signed for one
    viewer; valid PAGE_LINK_HOURS."""
    path, _, query = path.partition("?")
    tail = (query + "&" if query else "") + urlencode({"t": link_token(settings, channel, userid)})
    return f"{settings.public_base_url.rstrip('/')}/{quote(path.lstrip('/'), safe='/')}?{tail}"


class LinkRefused(Exception):
    """A link token that was changed, is not ours, or is too old (`expired`)."""

    def __init__(self, expired: bool) -> None:
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


def viewer_of(data: object) -> tuple[str, str]:
    """(channel, userid) of a signed payload; raises BadData when it is not one."""
    if not (isinstance(data, dict) and data.get("c") in CHANNELS and isinstance(data.get("u"), str)
            and data["u"]):
        raise BadData("unexpected page payload")
    return data["c"], data["u"]


def read_link(settings: Settings, token: str, max_age: int | None = None) -> tuple[str, str]:
    """(channel, userid) of a link token; raises LinkRefused. `max_age` in seconds (default PAGE_LINK_HOURS)."""
    age = settings.page_link_hours * 3600 if max_age is None else max_age
    try:
        return viewer_of(_signer(settings.secret_key).loads(token, max_age=age))
    except SignatureExpired as exc:
        raise LinkRefused(expired=True) from exc
    except BadData as exc:
        raise LinkRefused(expired=False) from exc
