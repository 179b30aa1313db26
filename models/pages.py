"""What the pages (H5) show beyond the chat card, as values: a student's card week by week, a
class's averages and spread, the students behind on data entry, the digest's states as a series.

Every number comes from the one card formula (models.card: `point_values`, `build_cards`,
`Formula`) over the same entries the chat card reads (models.cards); nothing is rendered here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from statistics import fmean

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models.card import Card, PointValue, build_cards, point_values
from models.cards import load_entries, student_cards
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.digest.week import DigestWeek, digest_week
from models.digest.weeks import class_week
from models.expected import expected_points
from models.periods import Calendar, Term, period_key, week_bounds
from models.schema import (
    Department,
    DigestState,
    PlanTask,
    PlanTaskUpdate,
    RiskWarning,
    RiskWarningEvent,
    SchoolClass,
    ScoreEntry,
    Staff,
    Student,
)
from models.tasks import OPEN as TASK_OPEN

HISTOGRAM_WIDTH = 10  # card points per bar of a class's spread of totals (totals run 0–100)


# ── one student, week by week ────────────────────────────────────────────────


@dataclass(frozen=True)
class WeekPoint:
    """A student's card as it stood at the end of one week of the semester (today for this week)."""

    day: date
    total: float | None
    subtotals: tuple[float | None, ...]  # in DOMAINS order


@dataclass(frozen=True)
class PointTrend:
    """One visible point: its value now and at the end of each week it had a value."""

    point: ScorePoint
    value: PointValue
    card_points: float
    weekly: tuple[float | None, ...]  # the point's value at each week's end (None before its first entry)


@dataclass(frozen=True)
class StudentHistory:
    """A student's semester so far: the weekly card series and each visible point's trend."""

    weeks: tuple[WeekPoint, ...]
    trends: tuple[PointTrend, ...]

    @property
    def semester_added(self) -> float | None:
        """The total now minus the total at the end of the first week with one (None without two)."""
        totals = [w.total for w in self.weeks if w.total is not None]
        return round(totals[-1] - totals[0], 1) if len(totals) >= 2 else None


def week_ends(term: Term, today: date) -> list[date]:
    """The Sunday of every week of the semester up to `today`'s week (that week: `today`)."""
    out = []
    sunday = week_bounds(term.start)[1]
    last = min(today, term.end)
    while sunday < last:
        out.append(sunday)
        sunday += timedelta(days=7)
    out.append(last)
    return out


def student_history(session: Session, catalogue: Catalogue, cal: Calendar, student_id: int, today: date,
                    visible: Callable[[ScorePoint], bool]) -> StudentHistory:
    """The card at every week's end of the semester (one formula run for all weeks) and the trend of
    every point `visible` lets the viewer see; hidden points count in the totals, unseen, as on the card."""
    term = cal.term_for(today)
    entries = [e for e in load_entries(session, term, [student_id]).get(student_id, []) if e.occurred_on <= today]
    days = week_ends(term, today)
    values = {i: point_values(catalogue, entries, day) for i, day in enumerate(days)}
    points = catalogue.individual()
    cards = build_cards(catalogue, values, visible, points)
    weeks = tuple(WeekPoint(day, cards[i].total, tuple(d.subtotal for d in cards[i].domains))
                  for i, day in enumerate(days))
    now = values[len(days) - 1]
    trends = tuple(
        PointTrend(p, now[p.code], p.card_points(now[p.code].value),
                   tuple(values[i][p.code].value if p.code in values[i] else None for i in range(len(days))))
        for p in points if visible(p) and p.code in now)
    return StudentHistory(weeks, trends)


def next_step(trends: Iterable[PointTrend]) -> PointTrend | None:
    """The visible point worth working on first: the fewest card points, the catalogue's order on a tie
    (None when nothing is recorded, or everything is full marks)."""
    scored = [t for t in trends if t.point.weight > 0 and t.card_points < 100.0]
    return min(scored, key=lambda t: t.card_points, default=None)


# ── a class ──────────────────────────────────────────────────────────────────


def class_student_ids(session: Session, class_id: int) -> list[int]:
    """The class's students, by 学号."""
    return list(session.scalars(select(Student.id).where(Student.class_id == class_id)
                                .order_by(Student.student_no)))


@dataclass(frozen=True)
class ClassFigures:
    """A class's students' cards reduced to what the pages compare with: the mean of each domain
    subtotal (over the students who have one) and every student's total."""

    averages: dict[str, float | None]
    totals: dict[int, float | None]  # student id → total

    @property
    def mean_total(self) -> float | None:
        present = [t for t in self.totals.values() if t is not None]
        return round(fmean(present), 1) if present else None


def class_figures(session: Session, catalogue: Catalogue, cal: Calendar, class_id: int,
                  today: date) -> ClassFigures:
    """Domain averages and totals of a class's students, from their cards (models.cards.student_cards)."""
    ids = class_student_ids(session, class_id)
    cards = student_cards(session, catalogue, cal, ids, today) if ids else {}
    return figures_of(cards)


def figures_of(cards: dict[int, Card]) -> ClassFigures:
    """`ClassFigures` of students' cards."""
    averages = {}
    for domain in DOMAINS:
        present = [s for c in cards.values() if (s := c.subtotal(domain)) is not None]
        averages[domain] = round(fmean(present), 1) if present else None
    return ClassFigures(averages, {sid: c.total for sid, c in cards.items()})


@dataclass(frozen=True)
class Bin:
    """One bar of a histogram: totals in [low, high) (the last bar includes its high)."""

    low: int
    high: int
    count: int


def histogram(totals: Iterable[float | None], width: int = HISTOGRAM_WIDTH) -> list[Bin]:
    """How many students' totals fall in each `width`-point band of 0–100 (students without one left out)."""
    bins = [Bin(low, low + width, 0) for low in range(0, 100, width)]
    counts = [0] * len(bins)
    for t in totals:
        if t is not None:
            counts[min(len(bins) - 1, max(0, int(t // width)))] += 1
    return [Bin(b.low, b.high, n) for b, n in zip(bins, counts, strict=True)]


@dataclass(frozen=True)
class Behind:
    """A student without a live entry for some of last week's expected weekly points."""

    student_id: int
    student_no: str
    name: str
    missing: tuple[str, ...]  # short names of the points missing (only those the viewer may see)


def students_behind(session: Session, catalogue: Catalogue, cal: Calendar, class_id: int, today: date,
                    visible: Callable[[ScorePoint], bool]) -> tuple[str, list[Behind]]:
    """(week key, the class's students missing a 周末 point of the week just ended), as the reminders
    and the digest count data entry (models.expected): only points someone types in, only those the
    viewer may see."""
    week = digest_week(today, cal)
    points = [p for p in expected_points(catalogue, "周末") if not p.is_class and visible(p)]
    if not points or not week.in_session:
        return week.key, []
    key = period_key("周末", week.sunday, cal)
    students = session.execute(select(Student.id, Student.student_no, Student.name)
                               .where(Student.class_id == class_id).order_by(Student.student_no)).all()
    done = set(session.execute(
        select(ScoreEntry.student_id, ScoreEntry.point_code)
        .join(Student, Student.id == ScoreEntry.student_id)
        .where(Student.class_id == class_id, ScoreEntry.period_key == key, ScoreEntry.revoked_at.is_(None),
               ScoreEntry.point_code.in_([p.code for p in points]))
        .group_by(ScoreEntry.student_id, ScoreEntry.point_code)).all())
    out = []
    for s in students:
        missing = tuple(p.short for p in points if (s.id, p.code) not in done)
        if missing:
            out.append(Behind(s.id, s.student_no, s.name, missing))
    return week.key, out


# ── the class average the card compares with ─────────────────────────────────


@dataclass(frozen=True)
class ClassAverage:
    """What a student's card is compared with: the class's domain means and mean total, as of `day`
    (the Sunday the weekly digest kept them for; None: computed now)."""

    averages: dict[str, float | None]
    mean_total: float | None
    day: date | None


def class_average(session: Session, catalogue: Catalogue, cal: Calendar, class_id: int, today: date) -> ClassAverage:
    """The class's means as the weekly digest kept them for its last Sunday (models/digest/weeks.py:
    one indexed row), else (none recent: a new semester, a new installation) from every classmate's
    card now (`class_figures`)."""
    kept = class_week(session, catalogue, cal.term_for(today), class_id, today)
    if kept is not None:
        return ClassAverage(kept.averages, kept.total, kept.day)
    figures = class_figures(session, catalogue, cal, class_id, today)
    return ClassAverage(figures.averages, figures.mean_total, None)


# ── what the digest is computed from ─────────────────────────────────────────


def digest_inputs(session: Session, week: DigestWeek) -> tuple | None:
    """A few numbers that change whenever something the digest of `week` is computed from does:
    the stored states; the entries dated up to its Sunday written after the newest state's last
    entry (a late 上周 recording; this week's recordings do not count); every undo; the warnings'
    history; the plan tasks. None without a state of the semester (the digest then reads every
    entry of it: nothing cheap to compare). The roster is not here (models/directory.py has its
    own fingerprint). A handful of index lookups and one range scan of the entries since the state.
    """
    states = tuple(session.execute(
        select(DigestState.id, DigestState.cutoff, DigestState.max_entry_id, DigestState.catalogue)
        .order_by(DigestState.id)).all())
    floor = max((s.max_entry_id for s in states
                 if s.cutoff <= week.sunday and s.cutoff >= week.term.start), default=None)
    if floor is None:
        return None
    late = session.execute(select(func.count(), func.max(ScoreEntry.id)).where(
        ScoreEntry.id > floor, ScoreEntry.occurred_on <= week.sunday)).one()
    undone = session.execute(select(func.count(), func.max(ScoreEntry.revoked_at)).where(
        ScoreEntry.revoked_at.is_not(None))).one()
    warnings = (session.scalar(select(func.max(RiskWarning.id))),
                tuple(session.execute(select(func.count(), func.max(RiskWarningEvent.id))).one()))
    tasks = session.execute(select(func.count(), func.max(PlanTask.id), func.sum(PlanTask.progress),
                                   func.sum(case((PlanTask.status == TASK_OPEN, PlanTask.id), else_=0)),
                                   func.min(PlanTask.due), func.max(PlanTask.due))).one()
    updates = session.scalar(select(func.max(PlanTaskUpdate.id)))
    return (tuple(tuple(s) for s in states), tuple(late), tuple(undone), warnings, tuple(tasks), updates)


def roster_mark(session: Session) -> tuple:
    """Where the roster has no fingerprint (SQLite: models/directory.py): counts and sums that change
    when a student, class, department or staff member is added, removed or moved."""
    return (tuple(session.execute(select(func.count(), func.sum(Student.id * Student.class_id))).one()),
            tuple(session.execute(select(func.count(), func.max(SchoolClass.id),
                                         func.sum(SchoolClass.id * SchoolClass.department_id))).one()),
            tuple(session.execute(select(func.count(), func.max(Staff.id),
                                         func.sum(Staff.id * func.coalesce(Staff.department_id, 0)))).one()),
            tuple(session.execute(select(func.count(), func.max(Department.id))).one()))
