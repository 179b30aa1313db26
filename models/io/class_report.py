"""What the workbooks show, as values: a class's students and cards, the points a sheet lists, and
the 学生学业情况分析报告's due periods and most-missing points (handlers/workbooks.py lays them out)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.card import Card
from models.cards import student_cards
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.expected import missing_entries
from models.periods import Calendar, Term, month_bounds, period_key, period_label
from models.schema import SchoolClass, Student


@dataclass
class ClassCards:
    """One class: its students (id, 学号, 姓名) and their cards, as of `today`."""

    klass: SchoolClass
    term: Term
    today: date
    students: list[tuple[int, str, str]]
    cards: dict[int, Card]

    def card_of(self, student_id: int) -> Card:
        return self.cards[student_id]


def class_cards(session: Session, catalogue: Catalogue, cal: Calendar, klass: SchoolClass,
                today: date) -> ClassCards:
    """Every student's card of a class, in 学号 order."""
    students = [(r.id, r.student_no, r.name) for r in session.execute(
        select(Student.id, Student.student_no, Student.name)
        .where(Student.class_id == klass.id).order_by(Student.student_no))]
    cards = student_cards(session, catalogue, cal, [s[0] for s in students], today)
    return ClassCards(klass, cal.term_for(today), today, students, cards)


def shown_points(catalogue: Catalogue, sensitive: bool) -> dict[str, list[ScorePoint]]:
    """Individual points by domain, in catalogue order; sensitive points only when allowed."""
    out: dict[str, list[ScorePoint]] = {d: [] for d in DOMAINS}
    for p in catalogue.individual():
        if sensitive or not p.sensitive:
            out[p.domain].append(p)
    return out

BANDS = (("90 分及以上", 90.0, None), ("80–89.9 分", 80.0, 90.0), ("70–79.9 分", 70.0, 80.0),
         ("60–69.9 分", 60.0, 70.0), ("60 分以下", None, 60.0))
LOWEST = 5  # students listed with the lowest totals
FALLING = 10  # students listed with falling value added
MISSING_POINTS = 8  # points listed with the most missing records
# When the points of each 采分时点 count as due, as the reminders' defaults do.
YEAR_START_WEEKS = 4
SEMESTER_END_DAYS = 17


def due_periods(cal: Calendar, today: date) -> list[tuple[str, date]]:
    """采分时点 whose period has come due by `today`, each with the day its period is checked on.

    Weekly points are checked on the last complete week, monthly points on the last complete
    month; 学年初 points after the first weeks of the year, 第一学期中 after mid-term, 学期末,
    学年末 and 毕业前 in the last weeks of the semester.
    """
    term = cal.term_for(today)
    out: list[tuple[str, date]] = []
    sunday = today if today.weekday() == 6 else today - timedelta(days=today.weekday() + 1)
    if term.start <= sunday:
        out += [("每次课前", sunday), ("周末", sunday)]
    month_end = today if month_bounds(today)[1] == today else month_bounds(today)[0] - timedelta(days=1)
    if term.start <= month_end:
        out.append(("月末", month_end))
    first = term if term.term == 1 else cal.previous_term(term)
    if term.term == 2 or today >= first.start + timedelta(days=7 * YEAR_START_WEEKS):
        out.append(("学年初", today))
    if term.term == 1 and today >= term.start + timedelta(days=(term.end - term.start).days // 2):
        out.append(("第一学期中", today))
    if today >= term.end - timedelta(days=SEMESTER_END_DAYS):
        out.append(("学期末", today))
        if term.term == 2:
            out += [("学年末", today), ("毕业前", today)]
    return out


@dataclass(frozen=True)
class MissingPoint:
    """A point of the class with students (or the class itself) lacking a record in a due period."""

    point: str
    when: str
    missing: int
    size: int
    is_class: bool


def missing_points(session: Session, catalogue: Catalogue, cal: Calendar, klass: SchoolClass,
                   today: date) -> list[MissingPoint]:
    """The class's points with the most missing records in the periods due by `today` (as the reminders count)."""
    found: dict[str, MissingPoint] = {}
    for period, day in due_periods(cal, today):
        label = period_label(period, period_key(period, day, cal))
        for items in missing_entries(session, catalogue, cal, period, day).values():
            for m in items:
                if m.class_code != klass.code or m.point_code in found:
                    continue
                found[m.point_code] = MissingPoint(m.point_short, f"{period}（{label}）",
                                                   m.class_size if m.is_class else m.missing_students,
                                                   m.class_size, m.is_class)
    return sorted(found.values(), key=lambda m: (-m.missing, m.point))[:MISSING_POINTS]

