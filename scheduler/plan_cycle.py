"""Jobs of the plan cycle (table 9) and of plan deadlines: reminders, 督办, check-ins, 整改清单.

Every job runs daily at its time and decides from the date whether it has anything to
do; the outbox key (recipient + purpose + period) makes a rerun, or the next day's run
inside the same window, send nothing twice. One message per person per run: their
tasks are bundled, and trimmed to WeCom's 2048 bytes.

Dates and times come from the environment, read once by core/config.py (core/schedules.py parses
them) and passed in through the job's context (`ctx.cycle`; the schedules in `ctx.schedules`):

- `TASK_DEADLINES_CRON`, `PLAN_DOCUMENTS_CRON`, `PLAN_SUBMISSION_CRON`, `PROGRESS_CHECKIN_CRON`,
  `OUTCOME_REVIEW_CRON`: when each job runs, `[DAYS] HH:MM` as the reminders' schedules
  (`08:20`, `08:50`, `09:25`, `09:35`, `09:50`, daily: never on the hour or half hour, as
  WeCom asks); the cycle jobs run only in their months unless the schedule names `month=`;
- `TASK_REMIND_DAYS_BEFORE` (3): the early deadline reminder, days before the due day (made up
  on a later day before the due day when its day was missed);
- `TASK_OVERDUE_EVERY_DAYS` (7): 督办通知 on the first run that finds a task overdue, then N days
  after the last one queued, until done;
- `PLAN_SUBMISSION_START` (03-01), `PLAN_REVIEW_DEADLINE` (03-31), `PLAN_LAST_CALL_DAYS` (4):
  事前, plans asked for from, reviewed by, and the last call that many days before;
- `PROGRESS_CHECKIN_MONTHS` (5-10), `PROGRESS_CHECKIN_DAY` (5): 事中, the months of the
  monthly check-in and the day of the month it goes out from;
- `OUTCOME_REVIEW_START` (01-05), `OUTCOME_REVIEW_LAST_CALL` (01-20), `CARRY_OVER_ON` (01-31):
  事后, in the year after the plan year: 达成度 asked for, reminded, and unfinished tasks
  carried into the 整改清单;
- `RECTIFICATION_DUE` (06-30): the deadline of a 整改 task, in the new plan year;
- `PLAN_DOCUMENTS_WEEKS` (4): 学年初 is this many weeks from the start of the first semester.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select

from core.render import render
from core.schedules import MonthDay
from models.expected import PLAN_DOCUMENTS, recorder_scopes
from models.outbox import enqueue
from models.periods import period_key, week_key
from models.schema import OutboxMessage, PlanTask, SchoolClass, ScoreEntry, Staff, Student
from models.tasks import (
    OPEN,
    REMINDED,
    SUPERVISED,
    TaskView,
    by_person,
    carry_over,
    cycle_tasks,
    fit_sections,
    last_notices,
    recipient_of,
    record_notice,
    rectification_list,
    reminder_due,
    supervision_due,
    task_view,
)
from scheduler.registry import JobContext, job

MESSAGE_LIMIT = 2048  # bytes of a WeCom text message
CARRY_GRACE_DAYS = 7  # a missed carry-over day is made up within this many days
NAMES_PER_CLASS = 10


def on(year: int, md: MonthDay) -> date:
    """A month-day in a year (29 February becomes the 28th in other years)."""
    month, day = md
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _span_months(first: MonthDay, last: MonthDay, extra_days: int = 0) -> tuple[int, ...]:
    end = on(2001, last) + timedelta(days=extra_days)
    months, d = [], on(2001, first)
    while d <= end:
        if d.month not in months:
            months.append(d.month)
        d += timedelta(days=1)
    return tuple(months)


# ---------------------------------------------------------------- helpers


@dataclass
class Sent:
    """What a job run queued: messages by kind, for its one-line result."""

    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # people without a 企业微信账号

    def add(self, kind: str, queued: bool) -> None:
        if queued:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def line(self, prefix: str = "") -> str:
        parts = [f"{n} {kind}" for kind, n in self.counts.items()] or ["nothing new"]
        tail = f"; {self.skipped} without a WeCom account" if self.skipped else ""
        return f"{prefix}{', '.join(parts)} queued{tail}"


def _send(ctx: JobContext, sent: Sent, person: Staff, purpose: str, key: str, template: str,
          sections: dict[str, list[Any]], kind: str, **context: object) -> OutboxMessage | None:
    """Queue one bundled message for a person (nothing for someone without a WeCom account);
    returns the new outbox row, None when nothing was queued."""
    to = recipient_of(person)
    if to is None:
        sent.skipped += 1
        return None
    body = fit_sections(lambda **kw: render(template, **kw), sections, MESSAGE_LIMIT,
                        name=person.name, **context)
    message = enqueue(ctx.session, to, purpose, key, body)
    sent.add(kind, message is not None)
    return message


# ---------------------------------------------------------------- deadlines and 督办


@job("task_deadlines", "Remind owners of plan tasks due soon and today; 督办通知 to supervisor and owner when "
     "overdue, weekly until done")
def task_deadlines(ctx: JobContext) -> str:
    """Remind owners before and on the due day; 督办通知 for overdue tasks, then weekly.

    Catch-up, decided from what was queued (the notices each task keeps, pointing at their
    outbox rows), not from the day count: an early reminder missed on its day goes out on a
    later day before the due day; an overdue task never supervised gets its 督办通知 now, and
    each person the next one `overdue_every_days` after the last one queued to them. The
    outbox key (person + day) keeps a rerun on one day from sending twice.
    """
    s, today = ctx.cycle, ctx.today
    soon_day = today + timedelta(days=s.remind_days_before)
    tasks = ctx.session.scalars(select(PlanTask).where(
        PlanTask.status == OPEN, PlanTask.due <= soon_day).order_by(PlanTask.due, PlanTask.id)).all()
    ids = [t.id for t in tasks]
    reminded = last_notices(ctx.session, ids, REMINDED)
    supervised = last_notices(ctx.session, ids, SUPERVISED)
    items: list[tuple[Staff, str, TaskView]] = []
    for task in tasks:
        view = task_view(task, today)
        if task.due == today:
            items.append((task.owner, "today", view))
        elif task.due > today:
            if reminder_due(task.due, today, reminded.get((task.id, recipient_of(task.owner) or "")),
                            s.remind_days_before):
                items.append((task.owner, "soon", view))
        else:
            people = [(task.owner, "overdue_own")]
            if task.supervisor is not None and task.supervisor_id != task.owner_id:
                people.append((task.supervisor, "overdue_supervised"))
            for person, section in people:
                last = supervised.get((task.id, recipient_of(person) or ""))
                if supervision_due(task.due, today, last, s.overdue_every_days):
                    items.append((person, section, view))
    sent = Sent()
    for person, sections in by_person(items).values():
        supervision = bool(sections.get("overdue_own") or sections.get("overdue_supervised"))
        ordered = {k: sections.get(k, []) for k in ("overdue_supervised", "overdue_own", "today", "soon")}
        message = _send(ctx, sent, person, "task_deadlines", today.isoformat(), "push/task_deadlines.txt", ordered,
                        "督办通知" if supervision else "reminders")
        if message is None:
            continue
        for section, kind in (("overdue_supervised", SUPERVISED), ("overdue_own", SUPERVISED), ("soon", REMINDED)):
            for view in ordered[section]:
                record_notice(ctx.session, view.id, kind, message, f"发给{person.name}", ctx.now)
    if not items:
        return f"no task due on {today} or by {soon_day} to remind of, none to supervise today"
    return sent.line()


# ---------------------------------------------------------------- student plan documents (table 15)


def _document_window(ctx: JobContext, period: str) -> bool:
    """Is today inside the reminding window of a plan document's 采分时点?"""
    term = ctx.calendar.term_for(ctx.today)
    if term.term != 1 or not term.contains(ctx.today):
        return False
    if period == "学年初":
        return ctx.today < term.start + timedelta(weeks=ctx.cycle.plan_documents_weeks)
    return period == "第一学期中"


@dataclass(frozen=True)
class ClassGap:
    """Students of one class still missing one plan document."""

    point: str
    class_name: str
    size: int
    missing: int
    names: list[str]


def _submitted(ctx: JobContext, code: str, key: str) -> set[int]:
    """Students whose latest live record of a document point for the period says 已提交."""
    latest: dict[int, float] = {}
    for student_id, value in ctx.session.execute(
            select(ScoreEntry.student_id, ScoreEntry.value).where(
                ScoreEntry.point_code == code, ScoreEntry.period_key == key, ScoreEntry.revoked_at.is_(None),
                ScoreEntry.student_id.is_not(None)).order_by(ScoreEntry.id)):
        latest[student_id] = value
    return {sid for sid, value in latest.items() if value >= 1}


@job("plan_documents", "Weekly list of students missing a plan document (学年初 and term 1) to their recorders")
def plan_documents(ctx: JobContext) -> str:
    """Weekly, in their windows, tell each recorder which students still miss a plan document."""
    points = [ctx.catalogue.by_code[c] for c in PLAN_DOCUMENTS if c in ctx.catalogue.by_code]
    active = [p for p in points if _document_window(ctx, p.period)]
    if not active:
        return "not in a plan-document window (学年初 / 第一学期)"
    classes = {c.id: c for c in ctx.session.scalars(select(SchoolClass).order_by(SchoolClass.code))}
    students: dict[int, list[Student]] = {}
    for st in ctx.session.scalars(select(Student).order_by(Student.student_no)):
        students.setdefault(st.class_id, []).append(st)
    staff = {p.id: p for p in ctx.session.scalars(select(Staff).order_by(Staff.staff_no))}
    scopes = recorder_scopes(ctx.session)  # role -> staff id -> classes, as the reminders and authz see it
    items: list[tuple[Staff, str, ClassGap]] = []
    missing_total = 0
    for point in active:
        done = _submitted(ctx, point.code, period_key(point.period, ctx.today, ctx.calendar))
        gaps: dict[int, ClassGap] = {}
        for class_id, klass in classes.items():
            roster = students.get(class_id, [])
            missing = [st for st in roster if st.id not in done]
            if missing:
                missing_total += len(missing)
                gaps[class_id] = ClassGap(point.short, klass.name, len(roster), len(missing),
                                          [st.name for st in missing[:NAMES_PER_CLASS]])
        recorders: dict[int, set[int]] = {}
        for role in point.recorders:
            for staff_id, class_ids in scopes.get(role, {}).items():
                recorders.setdefault(staff_id, set()).update(class_ids)
        for staff_id in sorted(recorders, key=lambda i: staff[i].staff_no):
            items.extend((staff[staff_id], point.code, gaps[c]) for c in classes if c in recorders[staff_id]
                         and c in gaps)
    sent = Sent()
    for person, sections in by_person(items).values():
        _send(ctx, sent, person, "plan_documents", week_key(ctx.today), "push/plan_documents.txt", sections,
              "reminders")
    if not items:
        return f"every student has {'、'.join(p.short for p in active)}"
    return sent.line(f"{missing_total} missing documents; ")


# ---------------------------------------------------------------- 事前: plans reviewed in March


@job("plan_submission", "事前 (March): ask owners for annual plans and supervisors to review them by 31 March, "
     "then a last call", months=lambda c: _span_months(c.plan_submission_start, c.plan_review_deadline))
def plan_submission(ctx: JobContext) -> str:
    """Ask owners for their annual plans and supervisors to review them by the deadline."""
    s, today = ctx.cycle, ctx.today
    cycle = today.year
    start, deadline = on(cycle, s.plan_submission_start), on(cycle, s.plan_review_deadline)
    last_call = max(start, deadline - timedelta(days=s.plan_last_call_days))
    if not start <= today <= deadline:
        return f"not in the 事前 window ({start:%m-%d}–{deadline:%m-%d})"
    phase = "last" if today >= last_call else "start"
    tasks = [t for t in cycle_tasks(ctx.session, cycle) if t.status == OPEN]
    if not tasks:
        return f"no open tasks of {cycle}: import the 任务分解表 first"
    items: list[tuple[Staff, str, Any]] = []
    reviewed: dict[int, dict[int, list[PlanTask]]] = {}
    for task in tasks:
        items.append((task.owner, "own", task_view(task, today)))
        if task.supervisor is not None and task.supervisor_id != task.owner_id:
            reviewed.setdefault(task.supervisor_id, {}).setdefault(task.owner_id, []).append(task)
    supervisors = {t.supervisor_id: t.supervisor for t in tasks if t.supervisor is not None}
    for sup_id, owners in reviewed.items():
        for owner_tasks in owners.values():
            items.append((supervisors[sup_id], "review", (owner_tasks[0].owner.name, len(owner_tasks))))
    sent = Sent()
    for person, sections in by_person(items).values():
        ordered = {"own": sections.get("own", []), "review": sections.get("review", [])}
        _send(ctx, sent, person, "plan_submission", f"{cycle}-{phase}", "push/plan_submission.txt", ordered,
              "last calls" if phase == "last" else "requests", cycle=cycle, deadline=deadline,
              last_call=phase == "last")
    return sent.line(f"{cycle} {phase}: ")


# ---------------------------------------------------------------- 事中: monthly progress, May–October


@job("progress_checkin", "事中 (May-October): each owner's open tasks, monthly, asking for 进度 #N",
     months=lambda c: c.checkin_months)
def progress_checkin(ctx: JobContext) -> str:
    """Once a month in the 事中 months, send each owner their open tasks and ask for `进度 #N`."""
    s, today = ctx.cycle, ctx.today
    if today.month not in s.checkin_months or today.day < s.checkin_day:
        return f"not a check-in day (months {','.join(map(str, s.checkin_months))}, from day {s.checkin_day})"
    tasks = ctx.session.scalars(select(PlanTask).where(
        PlanTask.status == OPEN, (PlanTask.start.is_(None)) | (PlanTask.start <= today),
    ).order_by(PlanTask.due, PlanTask.id)).all()
    if not tasks:
        return "no open tasks under way"
    sent = Sent()
    for person, sections in by_person((t.owner, "own", task_view(t, today)) for t in tasks).values():
        _send(ctx, sent, person, "progress_checkin", f"{today:%Y-%m}", "push/plan_progress_checkin.txt",
              sections, "check-ins", month=today.month)
    return sent.line()


# ---------------------------------------------------------------- 事后: 达成度 in January, then the 整改清单


@job("outcome_review", "事后 (January): ask owners for 达成度 #N; at the end of January carry unfinished tasks "
     "into the 整改清单",
     months=lambda c: _span_months(c.outcome_review_start, c.carry_over_on, CARRY_GRACE_DAYS))
def outcome_review(ctx: JobContext) -> str:
    """Ask owners for each task's 达成度; at the end of the review, carry unfinished tasks over."""
    s, today = ctx.cycle, ctx.today
    cycle = today.year - 1  # 事后 comes in the year after the plan year (次年1月)
    start, last_call = on(today.year, s.outcome_review_start), on(today.year, s.outcome_last_call)
    carry_day = on(today.year, s.carry_over_on)
    if carry_day <= today <= carry_day + timedelta(days=CARRY_GRACE_DAYS):
        return _carry(ctx, cycle)
    if not start <= today < carry_day:
        return f"not in the 事后 window ({start:%m-%d}–{carry_day:%m-%d})"
    phase = "last" if today >= last_call else "start"
    tasks = cycle_tasks(ctx.session, cycle)
    if phase == "last":
        tasks = [t for t in tasks if t.achievement is None]
    if not tasks:
        return f"no {cycle} tasks waiting for 达成度"
    sent = Sent()
    for person, sections in by_person((t.owner, "own", task_view(t, today)) for t in tasks).values():
        _send(ctx, sent, person, "outcome_review", f"{cycle}-{phase}", "push/plan_outcome_review.txt", sections,
              "last calls" if phase == "last" else "requests", cycle=cycle, carry_day=carry_day,
              last_call=phase == "last")
    return sent.line(f"{cycle} {phase}: ")


def _carry(ctx: JobContext, cycle: int) -> str:
    """The 整改清单: carry unfinished tasks into the next cycle and tell owners and supervisors."""
    created = carry_over(ctx.session, cycle, on(cycle + 1, ctx.cycle.rectification_due),
                         note=lambda c, t: render("push/task_carried_note.txt", cycle=c, task=t))
    listed = rectification_list(ctx.session, cycle)
    if not listed:
        return f"{cycle}: every task finished, nothing carried over"
    items: list[tuple[Staff, str, TaskView]] = []
    for task in listed:
        view = task_view(task, ctx.today)
        items.append((task.owner, "own", view))
        if task.supervisor is not None and task.supervisor_id != task.owner_id:
            items.append((task.supervisor, "supervised", view))
    sent = Sent()
    for person, sections in by_person(items).values():
        ordered = {"own": sections.get("own", []), "supervised": sections.get("supervised", [])}
        _send(ctx, sent, person, "rectification", str(cycle), "push/plan_rectification.txt", ordered,
              "notices", cycle=cycle)
    return sent.line(f"{cycle}: {len(created)} tasks carried into the 整改清单; ")
