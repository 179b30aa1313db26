"""预警 in chat: my open warnings, raising a flag, 处理 #N and 误报 #N (PRODUCT.md §5).

The check right after a recording is models/evaluation.py (the recording queues it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from core.messages import IncomingMessage, Reply
from core.render import fit, render
from handlers.card import find_student
from handlers.registry import Context, registry
from models.authz import Actor, student_view, viewable_classes
from models.catalogue import ROLES, normalise
from models.numbers import ROW_ID_MAX, is_digits, row_id, shown
from models.risk.checks import Person, close_warning, raise_flag
from models.risk.clock import local, moment
from models.risk.notices import warning_view, warning_views
from models.risk.routing import recipient, routed_names
from models.risk.rules import FALSE_ALARM, LEVELS, OPEN, RuleBook, rule_book
from models.risk.warnings import history, open_warnings_for
from models.schema import RiskWarning, RiskWarningEvent, Staff, Student
from wechat.wecom_api import MAX_TEXT_BYTES

log = logging.getLogger(__name__)

LIST_LIMIT = 10  # warnings listed in one reply (the rest: "…另有 N 条")
NOTE_LIMIT = 300  # characters of a 说明 kept in a message
ACTION_ARGS = re.compile(r"^#?\s*([0-9]+)\s*(.*)$", re.S)
EVENT_WORDS = {
    "opened": "开启", "raised": "升级", "evidence": "新证据", "flagged": "人工反映",
    "escalated": "督办", "handled": "处理", "false_alarm": "误报",
}


def _reply(template: str, **context: object) -> Reply:
    return Reply(fit(render(f"chat/{template}.txt", **context), MAX_TEXT_BYTES))


def _zone(ctx: Context) -> ZoneInfo:
    return ZoneInfo(ctx.settings.timezone)


def _rules(ctx: Context) -> RuleBook:
    return rule_book(ctx.settings, ctx.catalogue)


def _bad_number(number: str, command: str) -> Reply:
    """The reply to a #N too large (or zero) to name any warning."""
    return _reply("bad_number", number=shown(number), max=ROW_ID_MAX, command=command)


def _person(ctx: Context, class_id: int | None = None) -> Person:
    """The sender, named with the role that relates them to a class (任课教师 of it, say)."""
    actor = ctx.actor
    assert actor.staff_id is not None
    role = next((r for r in ROLES if r in actor.roles and (
        class_id is None or (scope := actor.classes_for_role(r)) is None or class_id in scope)), "")
    return Person(actor.staff_id, actor.name, actor.audit_name, role)


@registry.command("预警", audience="staff",
                  summary="chat/help/warnings.txt")
def warnings_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """No arguments: my open warnings; `#N`: one warning; otherwise a manual flag."""
    if not args:
        return _list(ctx)
    single = args.replace("# ", "#").split()
    if len(single) == 1 and is_digits(single[0].lstrip("#")):
        number = row_id(single[0])
        if number is None:
            return _bad_number(single[0].lstrip("#"), "预警")
        return _detail(ctx, number)
    return _flag(ctx, args, msg.text)


def _list(ctx: Context) -> Reply:
    assert ctx.actor.staff_id is not None
    book = _rules(ctx)
    mine = open_warnings_for(ctx.session, ctx.actor.staff_id)
    if not mine:
        return _reply("warning_none", categories=list(book.categories))
    views = warning_views(ctx.session, book, mine[:LIST_LIMIT], _zone(ctx))
    items = [views[w.id] for w in mine[:LIST_LIMIT]]
    return _reply("warning_list", items=items, total=len(mine), more=len(mine) - len(items))


def _detail(ctx: Context, number: int) -> Reply:
    warning = ctx.session.get(RiskWarning, number)
    if warning is None:
        return _reply("warning_not_found", number=number)
    if recipient(ctx.session, warning, ctx.actor.staff_id) is None:
        return _reply("warning_not_yours", number=number, verb="查看")
    book = _rules(ctx)
    tz = _zone(ctx)
    events = [_event_line(book, e, tz) for e in history(ctx.session, warning)]
    return _reply("warning_detail", w=warning_view(ctx.session, book, warning, tz), events=events,
                  routed=routed_names(ctx.session, warning))


def _event_line(book: RuleBook, event: RiskWarningEvent, tz: ZoneInfo) -> str:
    """`11-19 12:00 升级为严重 本学期违纪3次及以上` or `11-20 09:10 处理 王芳：已约谈` (chat/warning_event_line.txt)."""
    rule = book.by_id.get(event.rule_id or "")
    return render("chat/warning_event_line.txt", kind=event.kind, level=event.level,
                  word=EVENT_WORDS.get(event.kind, event.kind), when=f"{local(event.at, tz):%m-%d %H:%M}",
                  who=re.sub(r"\(.*\)$", "", event.actor) if event.actor_id is not None else None,
                  note=event.note or "", detail=rule.title if rule else (event.note or ""))


def _own_words(raw: str, tokens: Sequence[str], cleaned: str) -> str:
    """The 说明 as the sender typed it (punctuation kept): the raw text after `tokens`, in order.

    The pipeline's cleaning turns ，、； into spaces, which is right for parsing, not for a note.
    """
    for text in (raw.strip(), normalise(raw)):
        at = 0
        for token in tokens:
            found = text.find(token, at)
            if found < 0:
                break
            at = found + len(token)
        else:
            tail = text[at:].strip(" ,;:、，；：\t\n\u3000")
            return tail or cleaned
    return cleaned


def _flag(ctx: Context, args: str, raw: str) -> Reply:
    """`<学生> <类别> [级别] <说明>`: open (or add to) the category's warning."""
    book = _rules(ctx)
    parts = args.split(maxsplit=2)
    categories = list(book.categories)
    if len(parts) < 3:
        return _reply("warning_usage", categories=categories)
    token, category_token, note = parts
    category = book.category(category_token)
    if category is None:
        return _reply("warning_bad_category", token=category_token, categories=categories)
    level = None
    first, _, rest = note.partition(" ")
    if first in LEVELS:
        level, note = first, rest.strip()
    if not note:
        return _reply("warning_usage", categories=categories)
    note = _own_words(raw, ["预警", token, category_token, *([level] if level else [])], note)
    if viewable_classes(ctx.actor) == set():  # 院领导, 管理员: aggregates only, no individual cases
        return _reply("warning_out_of_scope", name=token)
    found = find_student(ctx, token)
    if found is None:
        return Reply(render("chat/student_not_found.txt", token=token))
    if isinstance(found, list):
        return Reply(render("chat/student_ambiguous.txt", token=token, students=found))
    if not _may_flag(ctx.actor, found):
        return _reply("warning_out_of_scope", name=found.name)
    author = _person(ctx, found.class_id)
    tz = _zone(ctx)
    warning, created, routed = raise_flag(
        ctx.session, book, found, category, level, note[:NOTE_LIMIT], author, moment(ctx.today, tz), ctx.today,
        notify=ctx.notify, tz=tz)
    mine = recipient(ctx.session, warning, author.staff_id) is not None
    return _reply("warning_flagged", w=warning_view(ctx.session, book, warning, tz), created=created,
                  routed=routed, author_told=not mine)


def _may_flag(actor: Actor, student: Student) -> bool:
    """Any staff member who may see the student's card may flag them."""
    return bool(student_view(actor, student.id, student.class_id).domains)


def _act(ctx: Context, args: str, raw: str, false_alarm: bool) -> Reply:
    verb = "标记误报" if false_alarm else "处理"
    match = ACTION_ARGS.match(args)
    if not match:
        return _reply("warning_action_usage", false_alarm=false_alarm)
    number, note = row_id(match.group(1)), match.group(2).strip()
    if number is None:
        return _bad_number(match.group(1), "误报" if false_alarm else "处理")
    warning = ctx.session.get(RiskWarning, number)
    if warning is None:
        return _reply("warning_not_found", number=number)
    tz = _zone(ctx)
    if recipient(ctx.session, warning, ctx.actor.staff_id) is None:
        return _reply("warning_not_yours", number=number, verb=verb)
    if warning.status != OPEN:
        closer = ctx.session.get(Staff, warning.closed_by) if warning.closed_by else None
        return _reply("warning_closed_already", number=number, when=local(warning.closed_at, tz),
                      who=closer.name if closer else "", false_alarm=warning.status == FALSE_ALARM)
    if not note:
        return _reply("warning_action_usage", false_alarm=false_alarm, number=number)
    note = _own_words(raw, ["误报" if false_alarm else "处理", match.group(1)], note)
    person = _person(ctx, warning.student.class_id)
    book = _rules(ctx)
    told = close_warning(ctx.session, book, warning, person, note[:NOTE_LIMIT], false_alarm,
                         moment(ctx.today, tz), ctx.today, notify=ctx.notify, tz=tz)
    return _reply("warning_closed", w=warning_view(ctx.session, book, warning, tz), false_alarm=false_alarm,
                  told=len(told))


@registry.command("处理", "已处理", audience="staff", summary="chat/help/handle.txt")
def handle_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Record what was done about warning #N and close it."""
    return _act(ctx, args, msg.text, false_alarm=False)


@registry.command("误报", audience="staff", summary="chat/help/false_alarm.txt")
def false_alarm_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Close warning #N as a false alarm (counted against the rules that raised it)."""
    return _act(ctx, args, msg.text, false_alarm=True)
