"""绑定码 / 家长绑定码 (a class's 班主任 or 辅导员), 绑定 and 解绑 (Official Account followers)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from core.messages import IncomingMessage, Reply
from core.render import fit, render
from handlers.registry import Context, registry
from models.authz import acts_on
from models.binding import MAX_PARENTS, IssuedCode, ReplacedOwner, bind, issue_codes, unbind, well_formed
from models.directory import ClassInfo, StudentInfo
from models.risk.clock import local, moment
from models.schema import ProcessedMessage
from wechat.wecom_api import MAX_TEXT_BYTES

ISSUERS = ("班主任", "辅导员")  # who hands out a class's codes
CODE_PLACEHOLDER = "0" * 8  # as wide as a code: a class's reply is measured before its codes exist


def when(value: datetime, ctx: Context) -> str:
    """A stored time as the reply shows it, in APP_TIMEZONE."""
    return f"{local(value, ZoneInfo(ctx.settings.timezone)):%Y-%m-%d %H:%M}"


def replaced_notice(replaced: ReplacedOwner) -> str:
    """The words for the follower a new student binding displaced."""
    return render("push/binding_replaced.txt", name=replaced.student_name, no=replaced.student_no)


def _now(ctx: Context) -> datetime:
    return moment(ctx.today, ZoneInfo(ctx.settings.timezone))


@registry.command("绑定码", audience="staff", roles=ISSUERS, summary="chat/help/bind_code.txt")
def student_codes(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """One-time codes for students to bind their own WeChat on the Official Account."""
    return _codes(msg, args, ctx, "student", "绑定码")


@registry.command("家长绑定码", audience="staff", roles=ISSUERS)
def parent_codes(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """One-time codes for parents to bind their WeChat to their child on the Official Account."""
    return _codes(msg, args, ctx, "parent", "家长绑定码")


def _codes(msg: IncomingMessage, args: str, ctx: Context, kind: str, command: str) -> Reply:
    if not args:
        return Reply(render("chat/bind_code_usage.txt", command=command))
    token = args.split()[0]
    scope = set().union(*(ctx.actor.classes_for_role(r) or set() for r in ISSUERS))
    klass = ctx.directory.class_keys.get(token)
    if klass is not None:
        if not acts_on(ctx.actor, ISSUERS, klass.id):
            return Reply(render("chat/bind_code_out_of_scope.txt", name=klass.name, student=False))
        return _answer(msg, ctx, _class_codes(ctx, klass, kind, command))
    student = ctx.directory.students_by_no.get(token)
    if student is None:
        named = [s for cid in sorted(scope) for s in ctx.directory.class_roster(cid)[1].get(token, ())]
        if len(named) > 1:
            return Reply(render("chat/student_ambiguous.txt", token=token, students=named))
        if not named:
            return Reply(render("chat/student_not_found.txt", token=token))
        student = named[0]
    if not acts_on(ctx.actor, ISSUERS, student.class_id):
        return Reply(render("chat/bind_code_out_of_scope.txt", name=student.name, student=True))
    (issued,) = _issue(ctx, [student], kind)
    return _answer(msg, ctx, render("chat/bind_code.txt", code=issued, kind=kind, class_name=student.school_class.name,
                                    expires=when(issued.expires_at, ctx)))


def _class_codes(ctx: Context, klass: ClassInfo, kind: str, command: str) -> str:
    """Every student's code of a class, as many as fit one message; codes are issued only for the
    students shown (a code nobody can read would only void the one they hold)."""
    students = ctx.directory.students_by_class.get(klass.id, [])
    now = _now(ctx)
    expires = when(now + timedelta(days=ctx.settings.bind_code_days), ctx)

    def page(items: list, more: int) -> str:
        return render("chat/bind_codes_class.txt", items=items, more=more, total=len(students),
                      class_name=klass.name, class_code=klass.code, kind=kind, expires=expires, command=command)

    placeholders = [IssuedCode(s.id, s.student_no, s.name, kind, CODE_PLACEHOLDER, now) for s in students]
    shown = len(students)
    while shown > 0 and len(page(placeholders[:shown], len(students) - shown).encode()) > MAX_TEXT_BYTES:
        shown -= 1
    issued = _issue(ctx, students[:shown], kind)
    return fit(page(issued, len(students) - shown), MAX_TEXT_BYTES)


def _issue(ctx: Context, students: list[StudentInfo], kind: str) -> list[IssuedCode]:
    return issue_codes(ctx.session, [s.id for s in students], kind, secret_key=ctx.settings.secret_key,
                       days=ctx.settings.bind_code_days, now=_now(ctx), issued_by=ctx.actor.audit_name,
                       source_msg=ctx.msg.msg_key)


def _answer(msg: IncomingMessage, ctx: Context, text: str) -> Reply:
    """A reply carrying codes: the stored copy (what a WeChat retry gets back) says to ask again
    instead, so no code is ever written to the database."""
    if ctx.processed_key:
        ctx.session.add(ProcessedMessage(msg_key=ctx.processed_key, sender=msg.sender,
                                         reply=render("chat/bind_code_retry.txt")))
        ctx.work.processed_written = True
    return Reply(text)


@registry.command("绑定", audience="follower", summary="chat/help/bind.txt")
def bind_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Bind the sender's WeChat to a student, as the student or as a parent (by the code's kind)."""
    parts = args.split()
    if len(parts) != 2 or not well_formed(parts[1]):
        return Reply(render("chat/bind_usage.txt"))
    result = bind(ctx.session, ctx.actor.userid, parts[0], parts[1], secret_key=ctx.settings.secret_key, now=_now(ctx),
                  tell_replaced=replaced_notice, source_msg=msg.msg_key)
    until = when(result.until, ctx) if result.until else None
    if result.outcome == "bound":
        return Reply(render("chat/bind_done.txt", result=result))
    if result.outcome == "locked":
        return Reply(render("chat/bind_locked.txt", until=until))
    if result.outcome == "parents_full":
        return Reply(render("chat/bind_parents_full.txt", result=result, most=MAX_PARENTS))
    return Reply(render("chat/bind_rejected.txt", until=until))


@registry.command("解绑", audience="bound", summary="chat/help/unbind.txt")
def unbind_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Unbind the sender's WeChat."""
    removed = unbind(ctx.session, ctx.actor.userid, actor=ctx.actor.audit_name, source_msg=msg.msg_key)
    if removed is None:
        return Reply(render("chat/mp_unbound.txt"))
    return Reply(render("chat/unbind_done.txt", removed=removed))
