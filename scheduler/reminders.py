"""Reminders before each 采分时点: one bundled message per recorder listing what is still missing.

WeCom drops what exceeds 30 messages a minute per member, so every job sends each recorder at
most ONE message (≤ 2048 bytes, the list cut with "…另有 N 项"), and only to recorders with
something missing. Each message is keyed by recipient + job + occasion in the outbox, so a job
run twice for the same period queues once.

Schedules and offsets are configurable by environment variable, read once by core/config.py
(core/schedules.py parses them) and passed in through the job's context (`ctx.schedules`,
`ctx.reminders`):

| variable | default | meaning |
|---|---|---|
| REMINDER_WEEKEND_CRON | `fri 15:10` | 周末 points of the current week |
| REMINDER_MONTH_END_CRON | `16:10` (daily) | 月末 points, acts REMINDER_MONTH_END_DAYS before month end |
| REMINDER_MONTH_END_DAYS | `3` | |
| REMINDER_SEMESTER_END_CRON | `10:10` (daily) | 学期末 (and in term 2 学年末) points |
| REMINDER_SEMESTER_END_DAYS | `17,3` | days before the term's last day on which it acts |
| REMINDER_YEAR_START_CRON | `mon 08:10` | 学年初 points, weekly in the first weeks of term 1 |
| REMINDER_YEAR_START_WEEKS | `4` | |
| REMINDER_FIRST_SEMESTER_CRON | `09:20` (daily) | 第一学期中 points, due at the midpoint of term 1 |
| REMINDER_FIRST_SEMESTER_DAYS | `7,0` | days before that midpoint on which it acts |
| REMINDER_GRADUATION_CRON | `day=1 09:40` (monthly) | 毕业前 points of final-year classes, during term 2 |
| REMINDER_SESSION_SUMMARY_CRON | `fri 16:40` | 每次课前 points: the week's summary to 任课教师 |

Each job acts on an occasion of a period (a week, a month, "17 days before the term ends") and
keys its messages by that occasion. When the occasion's day was missed (the scheduler was down),
the next run still inside the period, before its deadline, sends what is owed, and only to the
recorders not yet reminded for that occasion: the idempotency key decides, not the calendar.
An occasion is never sent early: the 周末 and 每次课前 reminders wait for their scheduled weekday
even when a late run of last week's falls on a Tuesday, and a later occasion of the same period
(3 days before the term ends) replaces an earlier one that was missed (17 days before).

A schedule is `[DAYS] HH:MM`, DAYS being a day-of-week expression (`fri`, `mon-fri`) or cron
fields as `field=value` (`day=1`, `month=3`); e.g. `fri 15:10`, `16:10`, `day=1 09:40`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select

from core.render import fit_items
from models.catalogue import Catalogue
from models.expected import Missing, expected_points, missing_entries
from models.outbox import enqueue
from models.periods import Calendar, Term, month_bounds, period_key, week_bounds, week_key
from models.schema import Staff
from scheduler.registry import JobContext, job
from wechat.wecom_api import MAX_TEXT_BYTES

# ── helpers ──────────────────────────────────────────────────────────────────

def in_session(cal: Calendar, start: date, end: date) -> bool:
    """Does any semester day fall in [start, end]? (False for a week or month wholly in a vacation.)"""
    return any(t.start <= end and start <= t.end for t in (cal.term_for(start), cal.term_for(end)))


def occasion(days_left: int, days_before: tuple[int, ...]) -> int | None:
    """Which of the "N days before" occasions is owed `days_left` days before a deadline: the
    latest one already reached (a missed day is made up until the next one), None before the first."""
    reached = [d for d in days_before if d >= days_left >= 0]
    return min(reached) if reached else None


def scheduled_since(ctx: JobContext, job_name: str, start: date) -> bool:
    """Has the job's schedule come due on a day from `start` up to today? A run missed on its
    day is made up later in the period; a run before that day (a late run of the previous
    period's) does not send this period's early."""
    tz = ctx.now.tzinfo
    trigger = CronTrigger(timezone=tz, **ctx.schedules[job_name])
    first = trigger.get_next_fire_time(None, datetime.combine(start, time(0), tz))
    return first is not None and first.date() <= ctx.today


def first_semester_midpoint(term: Term) -> date:
    """The day 第一学期中 points are due: halfway through the first semester."""
    return term.start + timedelta(days=(term.end - term.start).days // 2)


def _merge(catalogue: Catalogue, *results: dict[int, list[Missing]]) -> dict[int, list[Missing]]:
    order = {p.code: i for i, p in enumerate(catalogue.points)}
    merged: dict[int, list[Missing]] = {}
    for result in results:
        for staff_id, items in result.items():
            merged.setdefault(staff_id, []).extend(items)
    return {s: sorted(set(items), key=lambda m: (m.class_code, order.get(m.point_code, 0)))
            for s, items in merged.items()}


def _hint(catalogue: Catalogue, item: Missing) -> dict[str, object]:
    """How to record the first missing item: the point, the class, an example value or the levels."""
    point = catalogue.by_code[item.point_code]
    example = {"rate": "100", "document": "已提交"}.get(point.kind)
    return {"point": point.short, "class_code": item.class_code, "is_class": item.is_class,
            "example": example, "choices": [label for label, _score in point.levels]}


def reminder_body(template: str, catalogue: Catalogue, items: list[Missing], **context: object) -> str:
    """Render one recorder's message, cutting the list ("…另有 N 项") to stay within WeCom's limit."""
    hint = _hint(catalogue, items[0]) if items else None
    return fit_items(template, items, MAX_TEXT_BYTES, hint=hint, **context)


@dataclass
class Outcome:
    """Counts for a job's one-line result."""

    queued: int = 0
    already: int = 0
    complete: int = 0
    no_account: int = 0

    def line(self, label: str) -> str:
        return (f"{label}: queued {self.queued} reminders, {self.already} already queued, "
                f"{self.complete} recorders complete, {self.no_account} skipped without WeCom account")


def send_reminders(ctx: JobContext, purpose: str, key: str, missing: dict[int, list[Missing]],
                   template: str, **context: object) -> Outcome:
    """Queue ONE message per recorder with something missing (idempotent on recipient + purpose + key)."""
    out = Outcome(complete=sum(1 for items in missing.values() if not items))
    due = {s: items for s, items in missing.items() if items}
    if not due:
        return out
    staff = ctx.session.execute(
        select(Staff.id, Staff.name, Staff.wecom_userid).where(Staff.id.in_(list(due)))).all()
    for row in sorted(staff, key=lambda r: r.id):
        if not row.wecom_userid:
            out.no_account += 1
            continue
        body = reminder_body(template, ctx.catalogue, due[row.id], name=row.name, **context)
        if enqueue(ctx.session, row.wecom_userid, purpose, key, body) is None:
            out.already += 1
        else:
            out.queued += 1
    return out


def _missing(ctx: JobContext, period: str, day: date) -> dict[int, list[Missing]]:
    return missing_entries(ctx.session, ctx.catalogue, ctx.calendar, period, day, include_complete=True)


# ── jobs ─────────────────────────────────────────────────────────────────────

@job("weekend_reminders", "Remind recorders of this week's missing 周末 points (Friday afternoon)")
def weekend_reminders(ctx: JobContext) -> str:
    """周末 points of the current week, due on its Sunday."""
    start, end = week_bounds(ctx.today)
    key = week_key(ctx.today)
    if not in_session(ctx.calendar, start, end):
        return f"{key}: nothing due (vacation week)"
    if not scheduled_since(ctx, "weekend_reminders", start):
        return f"{key}: not due yet (reminders from the scheduled day to {end.isoformat()})"
    out = send_reminders(ctx, "weekend_reminders", key, _missing(ctx, "周末", ctx.today),
                         "push/weekend_reminder.txt", start=start, end=end, deadline=end)
    return out.line(key)


@job("month_end_reminders", "Remind recorders of this month's missing 月末 points, days before month end")
def month_end_reminders(ctx: JobContext) -> str:
    """月末 points of this month, from REMINDER_MONTH_END_DAYS before its last day (made up on a
    later day of the month when that day was missed)."""
    start, end = month_bounds(ctx.today)
    key = period_key("月末", ctx.today, ctx.calendar)
    remind_on = end - timedelta(days=ctx.reminders.month_end_days)
    if ctx.today < remind_on:
        return f"{key}: not due today (reminders on {remind_on.isoformat()})"
    if not in_session(ctx.calendar, start, end):
        return f"{key}: nothing due (vacation month)"
    out = send_reminders(ctx, "month_end_reminders", key, _missing(ctx, "月末", ctx.today),
                         "push/month_end_reminder.txt", month=ctx.today.month, deadline=end)
    return out.line(key)


@job("semester_end_reminders", "Remind recorders of missing 学期末 (and 学年末) points before the semester ends")
def semester_end_reminders(ctx: JobContext) -> str:
    """学期末 points (in the second semester 学年末 too): 17 and 3 days before the term's last day
    (an occasion missed is made up on the next run before the following one)."""
    term = ctx.calendar.term_for(ctx.today)
    days_left = (term.end - ctx.today).days
    owed = occasion(days_left, ctx.reminders.semester_end_days) if term.contains(ctx.today) else None
    if owed is None:
        days = "/".join(str(d) for d in ctx.reminders.semester_end_days)
        return f"{term.key}: not due today (reminders {days} days before {term.end.isoformat()})"
    results = [_missing(ctx, "学期末", ctx.today)]
    year_end = term.term == 2 and bool(expected_points(ctx.catalogue, "学年末"))
    if year_end:
        results.append(_missing(ctx, "学年末", ctx.today))
    key = f"{term.key}/D-{owed}"
    out = send_reminders(ctx, "semester_end_reminders", key, _merge(ctx.catalogue, *results),
                         "push/semester_end_reminder.txt", term=term.label, year_end=year_end,
                         deadline=term.end, days_left=days_left)
    return out.line(key)


@job("year_start_reminders", "Remind 班主任 of missing 学年初 points, weekly in the first weeks of the year")
def year_start_reminders(ctx: JobContext) -> str:
    """学年初 points, due at the end of the first REMINDER_YEAR_START_WEEKS weeks of the first semester."""
    term = ctx.calendar.term_for(ctx.today)
    deadline = term.start + timedelta(days=7 * ctx.reminders.year_start_weeks - 1)
    if term.term != 1 or not term.start <= ctx.today <= deadline:
        return f"{term.year}: not due (学年初 runs in the first {ctx.reminders.year_start_weeks} weeks of term 1)"
    key = f"{term.year}/{week_key(ctx.today)}"
    if not scheduled_since(ctx, "year_start_reminders", week_bounds(ctx.today)[0]):
        return f"{key}: not due yet this week"
    out = send_reminders(ctx, "year_start_reminders", key, _missing(ctx, "学年初", ctx.today),
                         "push/year_start_reminder.txt", year=term.year, deadline=deadline)
    return out.line(key)


@job("first_semester_reminders", "Remind recorders of missing 第一学期中 points before the middle of term 1")
def first_semester_reminders(ctx: JobContext) -> str:
    """第一学期中 points, due at the midpoint of term 1: a week before it and on the day (a week
    before made up on a later day before the midpoint when missed)."""
    term = ctx.calendar.term_for(ctx.today)
    if term.term != 1:
        return f"{term.key}: not due (第一学期中 is in term 1)"
    midpoint = first_semester_midpoint(term)
    days_left = (midpoint - ctx.today).days
    owed = occasion(days_left, ctx.reminders.first_semester_days)
    if owed is None:
        days = "/".join(str(d) for d in ctx.reminders.first_semester_days)
        return f"{term.key}: not due today (reminders {days} days before {midpoint.isoformat()})"
    key = f"{term.key}/D-{owed}"
    out = send_reminders(ctx, "first_semester_reminders", key, _missing(ctx, "第一学期中", ctx.today),
                         "push/first_semester_reminder.txt", term=term.label, deadline=midpoint)
    return out.line(key)


@job("graduation_reminders", "Remind recorders of missing 毕业前 points of final-year classes, monthly in term 2")
def graduation_reminders(ctx: JobContext) -> str:
    """毕业前 points of final-year classes, once a month during the last semester before graduation."""
    term = ctx.calendar.term_for(ctx.today)
    if term.term != 2 or not term.contains(ctx.today):
        return f"{term.key}: not due (毕业前 reminders run during term 2)"
    key = f"{term.year}/{ctx.today:%Y-%m}"
    if not scheduled_since(ctx, "graduation_reminders", month_bounds(ctx.today)[0]):
        return f"{key}: not due yet this month"
    out = send_reminders(ctx, "graduation_reminders", key, _missing(ctx, "毕业前", ctx.today),
                         "push/graduation_reminder.txt", deadline=term.end)
    return out.line(key)


@job("session_point_summary", "Weekly summary to 任课教师 of students without a 每次课前 observation this week")
def session_point_summary(ctx: JobContext) -> str:
    """每次课前 points: per class and point, how many students have no observation this week."""
    start, end = week_bounds(ctx.today)
    key = week_key(ctx.today)
    if not in_session(ctx.calendar, start, end):
        return f"{key}: nothing due (vacation week)"
    if not scheduled_since(ctx, "session_point_summary", start):
        return f"{key}: not due yet (summary from the scheduled day to {end.isoformat()})"
    out = send_reminders(ctx, "session_point_summary", key, _missing(ctx, "每次课前", ctx.today),
                         "push/session_point_summary.txt", start=start, end=end)
    return out.line(key)
