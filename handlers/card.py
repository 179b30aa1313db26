"""储值卡 and 班级卡: a card within the sender's scope, ending with a link to its page (/h5/card,
/h5/card/<学号>, /h5/class/<班级编号>) signed for the sender (models/page_links.py), never cut: the card
gives up its last lines to fit WeChat's 2048 bytes instead."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

from sqlalchemy import select

from core.messages import IncomingMessage, Reply
from core.render import fit, fit_ending, render
from handlers.registry import Context, registry
from models.authz import View, class_view, student_view, viewable_classes
from models.cards import class_card, student_card
from models.catalogue import DOMAINS
from models.page_links import CHANNELS, page_link
from models.periods import UNIT_OF_PERIOD
from models.risk.rules import rule_book
from models.risk.warnings import warning_history
from models.schema import SchoolClass, Staff, Student
from wechat.wecom_api import MAX_TEXT_BYTES


def find_student(ctx: Context, token: str) -> Student | list[Student] | None:
    """A student by 学号 or name among those the sender may see (a list when ambiguous)."""
    scope = viewable_classes(ctx.actor)
    by_no = ctx.session.scalar(select(Student).where(Student.student_no == token))
    if by_no is not None:
        return by_no
    query = select(Student).where(Student.name == token)
    if scope is not None:
        query = query.where(Student.class_id.in_(scope))
    found = ctx.session.scalars(query.order_by(Student.student_no)).all()
    if len(found) == 1:
        return found[0]
    return list(found) or None


def with_page_link(ctx: Context, text: str, path: str) -> str:
    """`text` ending with a link to the page `path`, signed for the sender on their channel (the console's
    link signs in as the console's user); within MAX_TEXT_BYTES, the link whole."""
    if ctx.msg.channel not in CHANNELS:
        return fit(text, MAX_TEXT_BYTES)
    url = page_link(ctx.settings, ctx.msg.channel, ctx.msg.sender, path)
    return fit_ending(text, render("chat/card_link.txt", url=url), MAX_TEXT_BYTES)


def render_student_card(ctx: Context, student: Student, view: View, warnings: list | None = None) -> str:
    """The card as the viewer may see it (with the warning history, on the staff view)."""
    card, latest = student_card(ctx.session, ctx.catalogue, ctx.calendar, student.id, ctx.today,
                                view.shows)
    term = ctx.calendar.term_for(ctx.today)
    recorders = {s.id: s.name for s in ctx.session.scalars(
        select(Staff).where(Staff.id.in_({e.recorder_id for e in latest if e.recorder_id})))}
    latest_entries = [
        LatestEntry(e.occurred_on, ctx.catalogue.by_code[e.point_code].short,
                    ctx.catalogue.by_code[e.point_code].display_value(e.value), recorders.get(e.recorder_id))
        for e in latest
    ]
    return render(
        "chat/card.txt", name=student.name, class_name=student.school_class.name, size=None, term=term.label,
        card=card, domains=[d for d in card.domains if d.domain in view.domains],
        full=view.domains == frozenset(DOMAINS), by_month=_by_month(ctx),
        latest=latest_entries, mean_unit=mean_unit, warnings=warnings or [],
    )


@dataclass(frozen=True)
class LatestEntry:
    """One of the latest entries on a student's card."""

    occurred_on: date
    point: str
    value: str
    recorder: str | None


def _by_month(ctx: Context) -> bool:
    """Is the value added compared with last month (else last week)?"""
    return ctx.catalogue.formula.compare == "month"


def mean_unit(line) -> str | None:  # noqa: ANN001 - a CardLine
    """What a card line's value is the mean over ("人", "次课", "周", "个月"), or None when it is no mean."""
    point, pv = line.point, line.value
    if point.derived is not None:
        return "人" if point.derived.op == "mean" else None
    if point.is_observation:
        return "次课"
    if point.kind == "count" or pv.periods <= 1:
        return None
    return "周" if UNIT_OF_PERIOD[point.period] == "week" else "个月"


@registry.command("储值卡", "我的储值卡", "成长卡", "我的成长卡", summary="chat/help/card.txt")
def card(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """A student's own card, or (for staff) a student's card within scope."""
    actor = ctx.actor
    own = actor.own_card  # a student's own card, or a parent's child's (without sensitive points)
    if not args:
        if own is not None:
            student = ctx.session.get(Student, own)
            text = render_student_card(ctx, student, student_view(actor, student.id, student.class_id))
            return Reply(with_page_link(ctx, text, "/h5/card"))
        return Reply(render("chat/card_usage.txt"))
    if own is not None:
        return Reply(render("chat/card_students_own.txt", actor=actor))
    if viewable_classes(actor) == set():
        return Reply(render("chat/card_out_of_scope.txt", name=args.split()[0], actor=actor))
    found = find_student(ctx, args.split()[0])
    if found is None:
        return Reply(render("chat/student_not_found.txt", token=args.split()[0]))
    if isinstance(found, list):
        return Reply(render("chat/student_ambiguous.txt", token=args.split()[0], students=found))
    view = student_view(actor, found.id, found.class_id)
    if not view.domains:
        return Reply(render("chat/card_out_of_scope.txt", name=found.name, actor=actor))
    text = render_student_card(ctx, found, view, warning_history(
        ctx.session, rule_book(ctx.settings, ctx.catalogue), found.id, view, ZoneInfo(ctx.settings.timezone)))
    return Reply(with_page_link(ctx, text, f"/h5/card/{found.student_no}"))


@registry.command("班级卡", audience="staff", summary="chat/help/class_card.txt")
def class_card_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """A class card (typed and derived class points) within the sender's scope."""
    if not args:
        return Reply(render("chat/class_card_usage.txt"))
    token = args.split()[0]
    klass = ctx.session.scalar(select(SchoolClass).where(
        (SchoolClass.code == token) | (SchoolClass.name == token)).limit(1))
    if klass is None:
        return Reply(render("chat/class_not_found.txt", token=token))
    view = class_view(ctx.actor, klass.id)
    if not view.domains:
        return Reply(render("chat/class_out_of_scope.txt", name=klass.name))
    card = class_card(ctx.session, ctx.catalogue, ctx.calendar, klass.id, ctx.today, view.shows)
    size = len(ctx.session.scalars(select(Student.id).where(Student.class_id == klass.id)).all())
    text = render(
        "chat/card.txt", name=klass.name, class_name=None, size=size, term=ctx.calendar.term_for(ctx.today).label,
        card=card, domains=[d for d in card.domains if d.domain in view.domains],
        full=view.domains == frozenset(DOMAINS), by_month=_by_month(ctx), latest=[],
        mean_unit=mean_unit,
    )
    return Reply(with_page_link(ctx, text, f"/h5/class/{klass.code}"))
