"""Plan tasks (任务分解表): the owner's updates, the queries, the 整改清单 of unfinished tasks and the
deadline notices. The import of the 任务 sheet is models/io/tasks_import.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.problems import Problem, ProblemError
from models.schema import AuditLog, OutboxMessage, PlanTask, PlanTaskUpdate, Staff, utcnow

OPEN, DONE, CARRIED = "open", "done", "carried"  # carried: replaced by its 整改 task
RECTIFY = "整改"
# 编号 leaves room for the "-整改2026" suffix of a carried task within the 32-character column.
CODE_MAX = 24


class TaskError(ProblemError):
    """An update the rules refuse (a closed task, a percentage out of range): templates/errors/tasks_*.txt."""

    def __init__(self, code: str, /, **fields: object) -> None:
        super().__init__(Problem(code, fields))


def cycle_of(due: date) -> int:
    """The plan year of a deadline: its year; a January deadline belongs to the year before.

    Table 9 reviews a plan year's outcome in January of the next year (次年1月), so a task
    due in January is judged in that review, with the year it belongs to.
    """
    return due.year - 1 if due.month == 1 else due.year


# ---------------------------------------------------------------- queries


def open_tasks_owned(session: Session, staff_id: int) -> list[PlanTask]:
    """The open tasks a person is responsible for (负责人), soonest deadline first."""
    return list(session.scalars(select(PlanTask).where(
        PlanTask.owner_id == staff_id, PlanTask.status == OPEN).order_by(PlanTask.due, PlanTask.id)))


def open_tasks_supervised(session: Session, staff_id: int) -> list[PlanTask]:
    """The open tasks a person supervises (督办人) for someone else, soonest deadline first."""
    return list(session.scalars(select(PlanTask).where(
        PlanTask.supervisor_id == staff_id, PlanTask.owner_id != staff_id, PlanTask.status == OPEN,
    ).order_by(PlanTask.due, PlanTask.id)))


def cycle_tasks(session: Session, cycle: int) -> list[PlanTask]:
    """Every task of a plan year except those already carried into the next one."""
    return list(session.scalars(select(PlanTask).where(
        PlanTask.cycle == cycle, PlanTask.status != CARRIED).order_by(PlanTask.due, PlanTask.id)))


def find_task(session: Session, token: str, staff_id: int | None = None) -> PlanTask | None:
    """A task by #N (its id) or by its 编号, preferring the sender's own tasks.

    `#12` reads as the id first (that is what `任务` shows), a bare `1.2.3` as the 编号 first.
    """
    ref = token.strip()
    by_id_first = ref.startswith("#")
    ref = ref.lstrip("#").strip()
    if not ref:
        return None
    by_id = session.get(PlanTask, int(ref)) if re.fullmatch(r"[0-9]{1,9}", ref) else None
    by_code = session.scalar(select(PlanTask).where(PlanTask.code == ref))
    order = [t for t in ((by_id, by_code) if by_id_first else (by_code, by_id)) if t is not None]
    for task in order:
        if staff_id is not None and staff_id in (task.owner_id, task.supervisor_id):
            return task
    return order[0] if order else None


def carried_into(session: Session, task: PlanTask) -> PlanTask | None:
    """The 整改 task a carried task went into."""
    return session.scalar(select(PlanTask).where(PlanTask.carried_from_id == task.id).limit(1))


# ---------------------------------------------------------------- updates


def _record(session: Session, task: PlanTask, actor: str, kind: str, value: int | None, note: str | None,
            old: dict[str, Any], source_msg: str | None) -> PlanTaskUpdate:
    update = PlanTaskUpdate(task_id=task.id, actor=actor, kind=kind, value=value, note=note, at=utcnow())
    session.add(update)
    session.add(AuditLog(actor=actor, action=kind, entity="plan_task", entity_key=task.code,
                         old_value=json.dumps(old, ensure_ascii=False),
                         new_value=json.dumps({"value": value, "note": note}, ensure_ascii=False),
                         source_msg=source_msg))
    return update


def _check_percent(value: int) -> None:
    if not 0 <= value <= 100:
        raise TaskError("tasks_bad_percent", value=value)


def _check_open(task: PlanTask) -> None:
    if task.status == DONE:
        raise TaskError("tasks_done")
    if task.status == CARRIED:
        raise TaskError("tasks_carried")


def set_progress(session: Session, task: PlanTask, value: int, actor: str, note: str | None = None,
                 source_msg: str | None = None) -> int:
    """Record the owner's progress (0–100) on an open task; returns the previous value."""
    _check_percent(value)
    _check_open(task)
    old = task.progress
    task.progress = value
    _record(session, task, actor, "progress", value, note, {"progress": old}, source_msg)
    return old


def complete(session: Session, task: PlanTask, actor: str, now: datetime, note: str | None = None,
             source_msg: str | None = None) -> None:
    """Mark an open task done (progress 100), keeping the owner's note."""
    _check_open(task)
    old = {"status": task.status, "progress": task.progress}
    task.status, task.progress, task.done_at = DONE, 100, now
    if note:
        task.note = note
    _record(session, task, actor, "done", 100, note, old, source_msg)


def report_achievement(session: Session, task: PlanTask, value: int, actor: str, note: str | None = None,
                       source_msg: str | None = None) -> int | None:
    """Record the 达成度 (0–100) of a task in the 事后 review; returns the previous value."""
    _check_percent(value)
    old = task.achievement
    task.achievement = value
    _record(session, task, actor, "achievement", value, note, {"achievement": old}, source_msg)
    return old


def _rectify_code(session: Session, task: PlanTask, next_cycle: int) -> str:
    """"<编号>-整改", or with the year (and a counter) when that is taken."""
    root = re.sub(rf"-{RECTIFY}\d*(-\d+)?$", "", task.code)[:CODE_MAX]
    taken = set(session.scalars(select(PlanTask.code).where(PlanTask.code.like(f"{root}-{RECTIFY}%"))))
    for candidate in (f"{root}-{RECTIFY}", f"{root}-{RECTIFY}{next_cycle}"):
        if candidate not in taken:
            return candidate
    n = 2
    while f"{root}-{RECTIFY}{next_cycle}-{n}" in taken:
        n += 1
    return f"{root}-{RECTIFY}{next_cycle}-{n}"


def carry_over(session: Session, cycle: int, due: date | None = None, actor: str = "系统", *,
               note: Callable[[int, PlanTask], str]) -> list[PlanTask]:
    """Carry the unfinished tasks of a plan year into the next one's 整改清单; returns the new tasks.

    Each open task gets one 整改 task (same owner, supervisor and progress, due `due`,
    30 June of the next year by default, with `note(cycle, task)` as where it came from,
    worded by the caller) and is closed as carried. Running it again creates nothing.
    """
    due = due or date(cycle + 1, 6, 30)
    done_ids = set(session.scalars(select(PlanTask.carried_from_id).where(PlanTask.carried_from_id.is_not(None))))
    created = []
    for task in session.scalars(select(PlanTask).where(
            PlanTask.cycle == cycle, PlanTask.status == OPEN).order_by(PlanTask.id)):
        if task.id in done_ids:
            task.status = CARRIED  # carried before, yet reopened by hand: close it again
            continue
        new = PlanTask(
            code=_rectify_code(session, task, cycle + 1), title=task.title, level=task.level,
            owner_id=task.owner_id, supervisor_id=task.supervisor_id, start=None, due=due,
            cycle=cycle + 1, progress=task.progress, status=OPEN, carried_from_id=task.id,
            note=note(cycle, task),
        )
        session.add(new)
        session.flush()
        task.status = CARRIED
        _record(session, task, actor, "carried", new.id, f"转入整改清单 {new.code}", {"status": OPEN}, None)
        created.append(new)
    session.flush()
    return created


def rectification_list(session: Session, cycle: int) -> list[PlanTask]:
    """The 整改清单 made from a plan year: the tasks carried from it into the next one."""
    carried_ids = select(PlanTask.id).where(PlanTask.cycle == cycle)
    return list(session.scalars(select(PlanTask).where(
        PlanTask.carried_from_id.in_(carried_ids)).order_by(PlanTask.id)))


# ---------------------------------------------------------------- deadline notices

# A notice about a task, kept in its history: value = the outbox row that carried it, note = to whom.
REMINDED, SUPERVISED = "reminded", "supervised"  # the early deadline reminder; a 督办通知


def last_notices(session: Session, task_ids: Iterable[int], kind: str) -> dict[tuple[int, str], date]:
    """(task id, recipient) → the day of the latest notice of `kind` actually queued to them.

    Read from the outbox rows the notices point at: their period key is the day the job
    queued them (ISO), so a notice whose message was never queued counts for nothing.
    """
    ids = sorted(set(task_ids))
    out: dict[tuple[int, str], date] = {}
    for start in range(0, len(ids), 900):
        rows = session.execute(
            select(PlanTaskUpdate.task_id, OutboxMessage.recipient, func.max(OutboxMessage.period_key))
            .join(OutboxMessage, OutboxMessage.id == PlanTaskUpdate.value)
            .where(PlanTaskUpdate.kind == kind, PlanTaskUpdate.task_id.in_(ids[start:start + 900]))
            .group_by(PlanTaskUpdate.task_id, OutboxMessage.recipient))
        out.update(((task_id, to), date.fromisoformat(day)) for task_id, to, day in rows)
    return out


def record_notice(session: Session, task_id: int, kind: str, message: OutboxMessage, note: str,
                  at: datetime) -> None:
    """Keep in a task's history that a notice about it was queued, and in which outbox row."""
    session.add(PlanTaskUpdate(task_id=task_id, actor="系统", kind=kind, value=message.id, note=note, at=at))


def reminder_due(due: date, today: date, last: date | None, days_before: int) -> bool:
    """The early reminder: from `days_before` days before the due day until the day before,
    once per due date (a day missed is made up on the next one, the due day has its own)."""
    return 1 <= (due - today).days <= days_before and (last is None or last < due - timedelta(days=days_before))


def supervision_due(due: date, today: date, last: date | None, every_days: int) -> bool:
    """A 督办通知: at once for an overdue task never supervised since it fell due, then
    `every_days` after the last one queued (not on fixed days: a late start is not skipped)."""
    return today > due and (last is None or last <= due or (today - last).days >= every_days)


# ---------------------------------------------------------------- presentation helpers


@dataclass(frozen=True)
class TaskView:
    """A task as a message lists it: the numbers a template needs, computed once."""

    id: int
    code: str
    title: str
    level: str | None
    progress: int
    achievement: int | None
    status: str
    due: date
    days_left: int  # negative when overdue
    owner: str
    supervisor: str | None

    @property
    def overdue(self) -> bool:
        return self.status == OPEN and self.days_left < 0


def task_view(task: PlanTask, today: date) -> TaskView:
    """The view of a task on `today`."""
    return TaskView(task.id, task.code, task.title, task.level, task.progress, task.achievement, task.status,
                    task.due, (task.due - today).days, task.owner.name,
                    task.supervisor.name if task.supervisor else None)


def fit_sections(render: Callable[..., str], sections: dict[str, list[Any]], limit: int = 2048,
                 **context: object) -> str:
    """Render with as many items as fit in `limit` UTF-8 bytes; `more` counts the items left out.

    `render(sections=…, more=…, **context)` gets each section's items in order. Items are
    dropped from the end, taking turns among the sections, so every section keeps its
    first items; the most items that fit win (an empty section stays, empty).
    """
    turns: list[tuple[str, int]] = []  # round robin: the first item of each section, then the second …
    for i in range(max((len(items) for items in sections.values()), default=0)):
        turns.extend((name, i) for name, items in sections.items() if i < len(items))
    total = len(turns)

    def attempt(k: int) -> str:
        keep = set(turns[:k])
        kept = {name: [x for i, x in enumerate(items) if (name, i) in keep] for name, items in sections.items()}
        return render(sections=kept, more=total - k, **context)

    text = attempt(total)
    if len(text.encode()) <= limit:
        return text
    lo, hi = 0, total - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(attempt(mid).encode()) <= limit:
            lo = mid
        else:
            hi = mid - 1
    text = attempt(lo)
    if len(text.encode()) > limit:  # even the frame is too long: cut it, on a character boundary
        text = text.encode()[:limit].decode(errors="ignore")
    return text


def recipient_of(staff: Staff | None) -> str | None:
    """Where a person's messages go: their 企业微信账号 (None when they have none)."""
    return staff.wecom_userid if staff is not None and staff.wecom_userid else None


def by_person(pairs: Iterable[tuple[Staff, str, Any]]) -> dict[int, tuple[Staff, dict[str, list[Any]]]]:
    """Group (person, section, item) into one bundle per person: person id -> (person, section -> items)."""
    out: dict[int, tuple[Staff, dict[str, list[Any]]]] = {}
    for person, section, item in pairs:
        _p, sections = out.setdefault(person.id, (person, {}))
        sections.setdefault(section, []).append(item)
    return out

