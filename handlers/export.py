"""导出 <班级>: a signed, expiring download link to the class's cards as a workbook.

The link is `{PUBLIC_BASE_URL}/export/<token>`; the token is signed with SECRET_KEY
(itsdangerous, salt "export") and carries the class id and the requester. It is valid for
EXPORT_LINK_HOURS hours (default 24; `settings.export_link_hours`); bot/web.py serves it after
checking the signature, its age, and that the requester may still export the class.

Who may export: a 班主任 their own classes, a 系部主任 the classes of their department, a
院领导 every class. Sensitive points appear only for a viewer allowed to see them (the
class's 班主任); everyone's totals are the same.
"""

from __future__ import annotations

from datetime import date

from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.authz import SENSITIVE_ROLES, Actor, acts_on
from models.catalogue import Catalogue
from models.schema import SchoolClass

EXPORT_ROLES = ("班主任", "系部主任", "院领导")
SALT = "export"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def link_max_age(settings: Settings) -> int:
    """How long an export link stays valid, in seconds (EXPORT_LINK_HOURS)."""
    return settings.export_link_hours * 3600


def serializer(secret_key: str) -> URLSafeTimedSerializer:
    """The signer of export links."""
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def sign_export(secret_key: str, class_id: int, requester: str) -> str:
    """A token for one class's workbook, requested by `requester` (their userid)."""
    return serializer(secret_key).dumps({"class": class_id, "by": requester})


def read_export(secret_key: str, token: str, max_age: int) -> tuple[int, str]:
    """(class id, requester) from a token; raises itsdangerous' SignatureExpired or BadData."""
    from itsdangerous import BadPayload  # noqa: PLC0415

    data = serializer(secret_key).loads(token, max_age=max_age)
    if not (isinstance(data, dict) and isinstance(data.get("class"), int) and isinstance(data.get("by"), str)):
        raise BadPayload("unexpected export payload")
    return data["class"], data["by"]


def may_export(actor: Actor, class_id: int) -> bool:
    """班主任 (own classes), 系部主任 (department), 院领导 (all)."""
    return acts_on(actor, EXPORT_ROLES, class_id)


def sees_sensitive(actor: Actor, class_id: int) -> bool:
    """Does the requester see the class's sensitive points (班主任, 辅导员, 学工办 in scope)?"""
    return acts_on(actor, SENSITIVE_ROLES, class_id)


def export_filename(klass: SchoolClass, today: date) -> str:
    return f"{klass.code}_储值卡_{today.isoformat()}.xlsx"


def export_workbook(session: Session, catalogue: Catalogue, klass: SchoolClass, actor: Actor,
                    today: date) -> bytes:
    """The class's workbook as the requester may see it: the analysis report and the card sheet."""
    from handlers.workbooks import report_workbook, workbook_bytes  # noqa: PLC0415  (openpyxl only when used)

    wb = report_workbook(session, catalogue, klass, today, sensitive=sees_sensitive(actor, klass.id))
    return workbook_bytes(wb)


def _find_class(ctx: Context, token: str) -> SchoolClass | None:
    return ctx.session.scalar(select(SchoolClass).where(SchoolClass.code == token)) or ctx.session.scalar(
        select(SchoolClass).where(SchoolClass.name == token).order_by(SchoolClass.code).limit(1))


@registry.command("导出", audience="staff", roles=EXPORT_ROLES,
                  summary="chat/help/export.txt")
def export_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Reply with a signed, expiring link to the class's workbook."""
    if not args:
        return Reply(render("chat/export_usage.txt"))
    name = args.split()[0]
    klass = _find_class(ctx, name)
    if klass is None:
        return Reply(render("chat/class_not_found.txt", token=name))
    if not may_export(ctx.actor, klass.id):
        return Reply(render("chat/export_out_of_scope.txt", name=klass.name))
    settings = ctx.settings
    token = sign_export(settings.secret_key, klass.id, ctx.actor.userid)
    url = f"{settings.public_base_url.rstrip('/')}/export/{token}"
    return Reply(render("chat/export_link.txt", name=klass.name, url=url, hours=settings.export_link_hours,
                        sensitive=sees_sensitive(ctx.actor, klass.id)))
