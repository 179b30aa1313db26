"""Plan tasks in chat: 任务, 进度 #N, 完成 #N, 达成度 #N (PRODUCT.md §5)."""

from __future__ import annotations

import re

from sqlalchemy import select

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, clean_text, registry
from models.numbers import ROW_ID_MAX, is_digits, row_id, shown
from models.outbox import enqueue
from models.schema import PlanTask, PlanTaskUpdate, utcnow
from models.tasks import (
    CARRIED,
    DONE,
    carried_into,
    complete,
    cycle_of,
    find_task,
    fit_sections,
    open_tasks_owned,
    open_tasks_supervised,
    recipient_of,
    report_achievement,
    set_progress,
    task_view,
)

# "#12 60", "#12 60% 说明", "1.2.3 60": the task, a percentage, an optional note.
PERCENT_ARGS = re.compile(r"^(?P<ref>#?\S+)\s+(?P<value>\d{1,4})\s*%?(?:\s+(?P<note>.+))?$", re.S)
# "#12", "#12 说明": the task and an optional note.
NOTE_ARGS = re.compile(r"^(?P<ref>#?\S+)(?:\s+(?P<note>.+))?$", re.S)
DETAIL_UPDATES = 5
PROGRESS_NAMES, COMPLETE_NAMES, ACHIEVEMENT_NAMES = ("进度",), ("完成",), ("达成度",)
SEPARATORS = " \t\n,;:、，；：\u3000"  # what clean_text turns into spaces, and spaces


def _args(args: str) -> str:
    """`# 12 60` → `#12 60`, one line."""
    return re.sub(r"^#\s+", "#", " ".join(args.split()))


def _typed_note(msg: IncomingMessage, names: tuple[str, ...], skip: int, note: str | None) -> str | None:
    """The note as the sender typed it (commas kept), if it is the note the cleaned text gave."""
    if not note:
        return None
    text = msg.text.strip()
    name = next((n for n in sorted(names, key=len, reverse=True) if text.startswith(n)), None)
    if name is None:
        return note
    rest = text[len(name):].lstrip(SEPARATORS)
    for _ in range(skip):
        rest = rest.lstrip("#＃").lstrip(SEPARATORS)
        rest = re.sub(rf"^[^{SEPARATORS}]+", "", rest, count=1).lstrip(SEPARATORS)
    return rest if clean_text(rest) == clean_text(note) else note


def _reply(template: str, **context: object) -> Reply:
    return Reply(render(f"chat/{template}.txt", **context))


def _bad_ref(ref: str) -> Reply | None:
    """The reply to a `#N` whose N is too large (or zero) to be any task's number."""
    number = ref.lstrip("#").strip()
    if ref.startswith("#") and is_digits(number) and row_id(number) is None:
        return _reply("bad_number", number=shown(number), max=ROW_ID_MAX, command="任务")
    return None


def _resolve(ctx: Context, ref: str, command: str) -> PlanTask | Reply:
    """The task the sender owns, or the reply saying why not."""
    if (bad := _bad_ref(ref)) is not None:
        return bad
    task = find_task(ctx.session, ref, ctx.actor.staff_id)
    if task is None:
        return _reply("task_not_found", ref=ref.lstrip("#"))
    if task.owner_id != ctx.actor.staff_id:
        return _reply("task_not_owner", task=task, command=command,
                      supervising=task.supervisor_id == ctx.actor.staff_id)
    return task


def _closed(ctx: Context, task: PlanTask) -> Reply | None:
    """The reply for a task that takes no more progress (done, or carried into the 整改清单)."""
    if task.status == DONE:
        return _reply("task_closed", task=task, carried=None)
    if task.status == CARRIED:
        return _reply("task_closed", task=task, carried=carried_into(ctx.session, task))
    return None


@registry.command("任务", "我的任务", "计划任务", audience="staff",
                  summary="chat/help/tasks.txt")
def tasks_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """My open tasks as owner and as supervisor; `任务 #N` shows one task in full."""
    staff_id = ctx.actor.staff_id
    assert staff_id is not None
    if args:
        return _detail(ctx, _args(args).split()[0])
    own = [task_view(t, ctx.today) for t in open_tasks_owned(ctx.session, staff_id)]
    supervised = [task_view(t, ctx.today) for t in open_tasks_supervised(ctx.session, staff_id)]
    done = len(ctx.session.scalars(select(PlanTask.id).where(
        PlanTask.owner_id == staff_id, PlanTask.status == DONE,
        PlanTask.cycle == cycle_of(ctx.today))).all())
    if not own and not supervised:
        return _reply("task_none", done=done)
    return Reply(fit_sections(
        lambda **kw: render("chat/task_list.txt", **kw),
        {"own": own, "supervised": supervised}, done=done, cycle=cycle_of(ctx.today)))


def _detail(ctx: Context, ref: str) -> Reply:
    if (bad := _bad_ref(ref)) is not None:
        return bad
    task = find_task(ctx.session, ref, ctx.actor.staff_id)
    if task is None or ctx.actor.staff_id not in (task.owner_id, task.supervisor_id):
        return _reply("task_not_found", ref=ref.lstrip("#"))
    updates = ctx.session.scalars(select(PlanTaskUpdate).where(PlanTaskUpdate.task_id == task.id)
                                  .order_by(PlanTaskUpdate.id.desc()).limit(DETAIL_UPDATES)).all()
    return Reply(fit_sections(
        lambda **kw: render("chat/task_detail.txt", **kw), {"updates": list(updates)},
        t=task_view(task, ctx.today), task=task, carried=carried_into(ctx.session, task)))


def _percent(ctx: Context, args: str, what: str) -> tuple[PlanTask, int, re.Match[str]] | Reply:
    """`<编号> <0–100> [说明]` for 进度 and 达成度: the task, the percent and the match, or the reply."""
    m = PERCENT_ARGS.match(_args(args))
    if m is None:
        return _reply("task_usage", command=what)
    found = _resolve(ctx, m["ref"], what)
    if isinstance(found, Reply):
        return found
    if int(m["value"]) > 100:
        return _reply("task_bad_percent", value=m["value"], what=what)
    return found, int(m["value"]), m


@registry.command(*PROGRESS_NAMES, audience="staff", summary="chat/help/progress.txt")
def progress_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """The owner reports progress 0–100 on an open task."""
    found = _percent(ctx, args, "进度")
    if isinstance(found, Reply):
        return found
    task, value, m = found
    if (closed := _closed(ctx, task)) is not None:
        return closed
    note = _typed_note(msg, PROGRESS_NAMES, 2, m["note"])
    old = set_progress(ctx.session, task, value, ctx.actor.audit_name, note, msg.msg_key)
    ctx.session.flush()
    return _reply("task_progress_set", t=task_view(task, ctx.today), old=old)


@registry.command(*COMPLETE_NAMES, audience="staff", summary="chat/help/complete.txt")
def complete_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """The owner marks a task done; its supervisor is told through the outbox."""
    m = NOTE_ARGS.match(_args(args))
    if m is None:
        return _reply("task_usage", command="完成")
    found = _resolve(ctx, m["ref"], "完成")
    if isinstance(found, Reply):
        return found
    task = found
    if (closed := _closed(ctx, task)) is not None:
        return closed
    note = _typed_note(msg, COMPLETE_NAMES, 1, m["note"])
    complete(ctx.session, task, ctx.actor.audit_name, utcnow(), note, msg.msg_key)
    ctx.session.flush()
    supervisor = task.supervisor if task.supervisor_id != task.owner_id else None
    to = recipient_of(supervisor)
    if to is not None:
        enqueue(ctx.session, to, "task_done", str(task.id),
                render("push/task_done.txt", t=task_view(task, ctx.today), note=note))
    return _reply("task_completed", t=task_view(task, ctx.today), supervisor=supervisor, notified=to is not None)


@registry.command(*ACHIEVEMENT_NAMES, audience="staff", summary="chat/help/achievement.txt")
def achievement_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """The owner reports a task's 达成度 (0–100) for the 事后 review."""
    found = _percent(ctx, args, "达成度")
    if isinstance(found, Reply):
        return found
    task, value, m = found
    note = _typed_note(msg, ACHIEVEMENT_NAMES, 2, m["note"])
    old = report_achievement(ctx.session, task, value, ctx.actor.audit_name, note, msg.msg_key)
    ctx.session.flush()
    return _reply("task_achievement_set", t=task_view(task, ctx.today), old=old, note=note)

