"""When the scheduled jobs run and on which days they act: the variables, their defaults, their parsing.

`core.config.load_settings` reads the variables below once, through these parsers, into
`Settings.schedules` (job id → cron fields), `Settings.reminders` and `Settings.cycle`. A malformed
value is a ValueError naming the variable.

A schedule is `[DAYS] HH:MM` in APP_TIMEZONE, DAYS being a day-of-week expression (`fri`,
`mon-fri`) or cron fields as `field=value` (`day=1`, `month=3`, `hour=8-20`); e.g. `fri 15:10`,
`16:10`, `day=1 09:40`. The defaults are never on the hour or half hour, as WeCom asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from apscheduler.triggers.cron import CronTrigger

# Each scheduled job: the variable that sets its schedule, and the schedule when it is unset.
# A new job adds its line here (the registry refuses a job without one).
JOB_SCHEDULES: dict[str, tuple[str, str]] = {
    # scheduler/reminders.py
    "weekend_reminders": ("REMINDER_WEEKEND_CRON", "fri 15:10"),
    "month_end_reminders": ("REMINDER_MONTH_END_CRON", "16:10"),
    "semester_end_reminders": ("REMINDER_SEMESTER_END_CRON", "10:10"),
    "year_start_reminders": ("REMINDER_YEAR_START_CRON", "mon 08:10"),
    "first_semester_reminders": ("REMINDER_FIRST_SEMESTER_CRON", "09:20"),
    "graduation_reminders": ("REMINDER_GRADUATION_CRON", "day=1 09:40"),
    "session_point_summary": ("REMINDER_SESSION_SUMMARY_CRON", "fri 16:40"),
    # scheduler/plan_cycle.py
    "task_deadlines": ("TASK_DEADLINES_CRON", "08:20"),
    "plan_documents": ("PLAN_DOCUMENTS_CRON", "08:50"),
    "plan_submission": ("PLAN_SUBMISSION_CRON", "09:25"),
    "progress_checkin": ("PROGRESS_CHECKIN_CRON", "09:35"),
    "outcome_review": ("OUTCOME_REVIEW_CRON", "09:50"),
    # scheduler/risk_jobs.py
    "risk_scan": ("RISK_SCAN_CRON", "06:40"),
    "warning_escalation": ("WARNING_ESCALATION_CRON", "hour=8-20 00:25"),
    # scheduler/digest_jobs.py, scheduler/weekly_card.py
    "weekly_digest": ("WEEKLY_DIGEST_CRON", "mon 07:50"),
    "student_weekly_card": ("STUDENT_WEEKLY_CARD_CRON", "mon 08:10"),
}

Getter = Callable[[str], "str | None"]  # a variable's value, stripped; None when unset or empty
MonthDay = tuple[int, int]
CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_schedule(text: str) -> dict[str, str]:
    """`fri 15:10` → {"day_of_week": "fri", "hour": "15", "minute": "10"}; checked by APScheduler."""
    tokens = text.split()
    if not tokens or not (match := _TIME.match(tokens[-1])):
        raise ValueError(f"schedule {text!r}: expected '[DAYS] HH:MM', e.g. 'fri 15:10'")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ValueError(f"schedule {text!r}: no such time of day")
    cron = {"hour": str(hour), "minute": str(minute)}
    for token in tokens[:-1]:
        name, sep, value = token.partition("=")
        if not sep:
            name, value = "day_of_week", token
        if name not in CRON_FIELDS or not value:
            raise ValueError(f"schedule {text!r}: unknown cron field {name!r}")
        cron[name] = value
    CronTrigger(timezone="UTC", **cron)  # raises ValueError on a bad field value
    return cron


def default_schedules() -> dict[str, dict[str, str]]:
    """Every job's schedule with no variable set."""
    return {job: parse_schedule(default) for job, (_var, default) in JOB_SCHEDULES.items()}


def job_schedules(get: Getter) -> dict[str, dict[str, str]]:
    """Every job's schedule: its variable's, else its default."""
    out = {}
    for job, (var, default) in JOB_SCHEDULES.items():
        try:
            out[job] = parse_schedule(get(var) or default)
        except ValueError as exc:
            raise ValueError(f"{var}: {exc}") from None
    return out


# ── the reminders before each 采分时点 (scheduler/reminders.py) ───────────────

@dataclass(frozen=True)
class ReminderSettings:
    """On which days the reminder jobs act."""

    month_end_days: int = 3  # REMINDER_MONTH_END_DAYS: 月末 reminders this many days before month end
    semester_end_days: tuple[int, ...] = (17, 3)  # REMINDER_SEMESTER_END_DAYS: before the term's last day
    year_start_weeks: int = 4  # REMINDER_YEAR_START_WEEKS: 学年初 lasts this many weeks of term 1
    first_semester_days: tuple[int, ...] = (7, 0)  # REMINDER_FIRST_SEMESTER_DAYS: before term 1's midpoint


def _days(text: str, name: str) -> tuple[int, ...]:
    try:
        days = tuple(sorted({int(x) for x in text.replace("，", ",").split(",") if x.strip()}, reverse=True))
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected whole days such as '17,3'") from None
    if not days or min(days) < 0:
        raise ValueError(f"{name}={text!r}: expected whole days such as '17,3'")
    return days


def _number(text: str, name: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a whole number") from None
    if value < minimum:
        raise ValueError(f"{name}={text!r}: must be at least {minimum}")
    return value


def reminder_settings(get: Getter) -> ReminderSettings:
    """Read the REMINDER_* offsets (defaults where unset); a bad value raises ValueError naming it."""
    return ReminderSettings(
        month_end_days=_number(get("REMINDER_MONTH_END_DAYS") or "3", "REMINDER_MONTH_END_DAYS", 0),
        semester_end_days=_days(get("REMINDER_SEMESTER_END_DAYS") or "17,3", "REMINDER_SEMESTER_END_DAYS"),
        year_start_weeks=_number(get("REMINDER_YEAR_START_WEEKS") or "4", "REMINDER_YEAR_START_WEEKS", 1),
        first_semester_days=_days(get("REMINDER_FIRST_SEMESTER_DAYS") or "7,0", "REMINDER_FIRST_SEMESTER_DAYS"),
    )


# ── the plan cycle, table 9 (scheduler/plan_cycle.py) ────────────────────────

@dataclass(frozen=True)
class CycleSettings:
    """When the plan-cycle jobs act; defaults follow table 9 of the seed (variables in plan_cycle.py)."""

    remind_days_before: int = 3
    overdue_every_days: int = 7
    plan_submission_start: MonthDay = (3, 1)
    plan_review_deadline: MonthDay = (3, 31)
    plan_last_call_days: int = 4
    checkin_months: tuple[int, ...] = (5, 6, 7, 8, 9, 10)
    checkin_day: int = 5
    outcome_review_start: MonthDay = (1, 5)
    outcome_last_call: MonthDay = (1, 20)
    carry_over_on: MonthDay = (1, 31)
    rectification_due: MonthDay = (6, 30)
    plan_documents_weeks: int = 4


def _month_day(name: str, text: str) -> MonthDay:
    m = re.fullmatch(r"(\d{1,2})-(\d{1,2})", text.strip())
    try:
        if m is None:
            raise ValueError
        date(2000, int(m[1]), int(m[2]))  # a leap year: 02-29 is allowed
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected MM-DD, e.g. 03-31") from None
    return int(m[1]), int(m[2])


def _months(name: str, text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d{1,2})(?:-(\d{1,2}))?", part)
        if m is None or not 1 <= int(m[1]) <= int(m[2] or m[1]) <= 12:
            raise ValueError(f"{name}={text!r}: expected months like 5-10 or 3,6,9")
        out.extend(range(int(m[1]), int(m[2] or m[1]) + 1))
    return tuple(sorted(set(out)))


def _count(name: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or not low <= int(text) <= high:
        raise ValueError(f"{name}={text!r}: expected a whole number from {low} to {high}")
    return int(text)


_COUNTS = {"TASK_REMIND_DAYS_BEFORE": ("remind_days_before", 1, 60),
           "TASK_OVERDUE_EVERY_DAYS": ("overdue_every_days", 1, 60),
           "PLAN_LAST_CALL_DAYS": ("plan_last_call_days", 0, 27),
           "PROGRESS_CHECKIN_DAY": ("checkin_day", 1, 28),
           "PLAN_DOCUMENTS_WEEKS": ("plan_documents_weeks", 1, 20)}
_MONTH_DAYS = {"PLAN_SUBMISSION_START": "plan_submission_start", "PLAN_REVIEW_DEADLINE": "plan_review_deadline",
               "OUTCOME_REVIEW_START": "outcome_review_start", "OUTCOME_REVIEW_LAST_CALL": "outcome_last_call",
               "CARRY_OVER_ON": "carry_over_on", "RECTIFICATION_DUE": "rectification_due"}


def cycle_settings(get: Getter) -> CycleSettings:
    """Read the plan-cycle variables (defaults where unset); a malformed value is an error naming it."""
    values: dict[str, object] = {}
    for name, (attr, low, high) in _COUNTS.items():
        if (text := get(name)) is not None:
            values[attr] = _count(name, text, low, high)
    for name, attr in _MONTH_DAYS.items():
        if (text := get(name)) is not None:
            values[attr] = _month_day(name, text)
    if (text := get("PROGRESS_CHECKIN_MONTHS")) is not None:
        values["checkin_months"] = _months("PROGRESS_CHECKIN_MONTHS", text)
    settings = CycleSettings(**values)  # type: ignore[arg-type]
    if settings.plan_submission_start > settings.plan_review_deadline:
        raise ValueError("PLAN_SUBMISSION_START must not be after PLAN_REVIEW_DEADLINE")
    if not settings.outcome_review_start <= settings.outcome_last_call <= settings.carry_over_on:
        raise ValueError("expected OUTCOME_REVIEW_START <= OUTCOME_REVIEW_LAST_CALL <= CARRY_OVER_ON")
    return settings
