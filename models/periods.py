"""Periods and the academic calendar: which period a record belongs to, and grace windows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from models.problems import Problem, ProblemError

# How long after a period ends it may still be filled (`上周 …`, `上月 …`).
GRACE_DAYS = {"week": 3, "month": 5, "semester": 14, "year": 30}
# Years of study in a 高职 programme; 毕业前 points belong to the last one.
PROGRAMME_YEARS = 3

# Which calendar unit each 采分时点 is kept per.
UNIT_OF_PERIOD = {
    "每次课前": "week",  # each record is a session's observation; weeks and semesters average them
    "周末": "week",
    "月末": "month",
    "学期末": "semester",
    "第一学期中": "semester",
    "学年初": "year",
    "学年末": "year",
    "毕业前": "year",
}
UNIT_WORDS = {"week": "周", "month": "月", "semester": "学期", "year": "学年"}
PREVIOUS_WORDS = {"上周": "week", "上月": "month", "上个月": "month", "上学期": "semester", "上学年": "year"}


@dataclass(frozen=True)
class Term:
    """One semester: 学年 "2025-2026", 学期 1 or 2, inclusive dates."""

    year: str
    term: int
    start: date
    end: date

    @property
    def key(self) -> str:
        return f"{self.year}-{self.term}"

    @property
    def label(self) -> str:
        return f"{self.year}学年第{'一' if self.term == 1 else '二'}学期"

    def contains(self, d: date) -> bool:
        return self.start <= d <= self.end


def academic_year_of(d: date) -> str:
    """The 学年 a date falls in under the default calendar (September to August)."""
    first = d.year if d.month >= 9 else d.year - 1
    return f"{first}-{first + 1}"


def default_term(d: date) -> Term:
    """Without a 校历: 1 Sep–31 Jan is the first semester, 1 Feb–31 Aug the second."""
    year = academic_year_of(d)
    first = int(year[:4])
    if d.month >= 9 or d.month == 1:
        return Term(year, 1, date(first, 9, 1), date(first + 1, 1, 31))
    return Term(year, 2, date(first + 1, 2, 1), date(first + 1, 8, 31))


class Calendar:
    """The college's semesters (from the 校历 sheet), falling back to the default rule."""

    def __init__(self, terms: list[Term] | None = None) -> None:
        self.terms = sorted(terms or [], key=lambda t: t.start)

    def term_for(self, d: date) -> Term:
        """The semester a day belongs to; a vacation day belongs to the semester before it.

        A day the 校历 does not cover (before its first semester, after its last one, or in
        a gap where a semester is missing) follows the default rule, so a new academic
        year that has not been configured yet is not filed under the last configured one.
        """
        before = after = None
        for t in self.terms:
            if t.contains(d):
                return t
            if t.start <= d:
                before = t
            elif after is None:
                after = t
        fallback = default_term(d)
        if before is None:
            return fallback
        if fallback.key == before.key or (after is not None and _successive(before, after)):
            return before  # a vacation
        end = fallback.end if after is None else min(fallback.end, after.start - timedelta(days=1))
        return Term(fallback.year, fallback.term, max(fallback.start, before.end + timedelta(days=1)), end)

    def previous_term(self, term: Term) -> Term:
        return self.term_for(term.start - timedelta(days=1))

    def next_term(self, term: Term) -> Term:
        """The semester after `term` (the vacation after `term` still belongs to `term`)."""
        for t in self.terms:
            if t.start > term.end:
                return t
        day = term.end + timedelta(days=1)
        nxt = default_term(day)
        if nxt.key == term.key:
            nxt = default_term(nxt.end + timedelta(days=1))
        return Term(nxt.year, nxt.term, max(nxt.start, day), nxt.end)


def _successive(a: Term, b: Term) -> bool:
    """Is `b` the semester right after `a` (so the days between them are a vacation)?"""
    if a.term == 1:
        return b.term == 2 and b.year == a.year
    return b.term == 1 and int(b.year[:4]) == int(a.year[:4]) + 1


def week_key(d: date) -> str:
    iso = d.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def week_bounds(d: date) -> tuple[date, date]:
    monday = d - timedelta(days=d.weekday())
    return monday, monday + timedelta(days=6)


def month_bounds(d: date) -> tuple[date, date]:
    first = d.replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return first, nxt - timedelta(days=1)


def unit_bounds(unit: str, d: date, cal: Calendar) -> tuple[date, date]:
    """First and last day of the `unit` period containing `d`."""
    if unit == "week":
        return week_bounds(d)
    if unit == "month":
        return month_bounds(d)
    term = cal.term_for(d)
    if unit == "semester":
        return term.start, term.end
    first = term if term.term == 1 else cal.previous_term(term)
    second = term if term.term == 2 else cal.next_term(term)
    return (first.start if first.year == term.year else term.start,
            second.end if second.year == term.year else term.end)


def period_key(period: str, d: date, cal: Calendar) -> str:
    """The key of the period of a point (by its 采分时点) that contains day `d`."""
    unit = UNIT_OF_PERIOD[period]
    if unit == "week":
        return week_key(d)
    if unit == "month":
        return f"{d.year}-{d.month:02d}"
    term = cal.term_for(d)
    return term.key if unit == "semester" else term.year


def period_label(period: str, key: str) -> str:
    """A period key as a person reads it."""
    unit = UNIT_OF_PERIOD[period]
    if unit == "week":
        return f"{key[:4]}年第{int(key[6:])}周"
    if unit == "month":
        return f"{key[:4]}年{int(key[5:])}月"
    if unit == "semester":
        return f"{key[:9]}学年第{'一' if key.endswith('-1') else '二'}学期"
    return f"{key}学年"


@dataclass(frozen=True)
class Placement:
    """Where a record goes: the day it counts on, its period and semester keys."""

    occurred_on: date
    period_key: str
    semester_key: str


class PeriodError(ProblemError):
    """The record falls outside its point's rules: one `Problem` (templates/errors/period_*.txt)."""

    def __init__(self, code: str, /, **fields: object) -> None:
        """The problem `code` and the fields its template names."""
        super().__init__(Problem(code, fields))

    @property
    def problem(self) -> Problem:
        """The one problem."""
        return self.problems[0]


def place(period: str, today: date, cal: Calendar, previous: str | None = None,
          grade: int | None = None) -> Placement:
    """Place a record made `today` (or for the period just ended, within its grace window)."""
    unit = UNIT_OF_PERIOD[period]
    day = today
    if previous is not None:
        if previous != unit:
            raise PeriodError("period_wrong_unit", unit=UNIT_WORDS[unit], previous=UNIT_WORDS[previous])
        start, _end = unit_bounds(unit, today, cal)
        day = start - timedelta(days=1)
        # The period just ended runs up to the day before the current one begins (a
        # vacation belongs to the semester before it), so the grace window counts from there.
        deadline = day + timedelta(days=GRACE_DAYS[unit])
        if today > deadline:
            raise PeriodError("period_grace_over", unit=UNIT_WORDS[unit], deadline=deadline)
    term = cal.term_for(day)
    if period == "第一学期中" and term.term != 1:
        raise PeriodError("period_first_semester")
    if period == "毕业前" and grade is not None:
        start_year = int(term.year[:4])
        if start_year < grade + PROGRAMME_YEARS - 1:
            raise PeriodError("period_graduation_year")
    return Placement(day, period_key(period, day, cal), term.key)
