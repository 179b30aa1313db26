"""The digest's weeks: each scope's means of the card's domain subtotals and total as of a Sunday,
kept in table digest_means (scope 'college' id 0, each 'department', each 'class') by the weekly
job (build_college with `persist`), from the scores it computed anyway (models/digest/standing.py,
the card formula); once per (scope, semester, Sunday), so a rerun adds nothing. The dashboard's
chart of the weeks and the card page's class average read them: a handful of rows, no entries.

The job keeps the week's Sunday and the Sunday before (when of the same semester); earlier weeks
are there only if the job ran then, or if `fill_weeks` computed them (the demo does: a few hundred
students; it reads the semester's entries of every student at once).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from statistics import fmean

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.card import EMPTY, Formula, Scores, point_values
from models.cards import load_entries
from models.catalogue import DOMAINS, Catalogue
from models.digest.state import fingerprint
from models.digest.week import digest_week
from models.periods import Calendar, Term, week_bounds
from models.schema import DigestMeans, SchoolClass, Student

COLLEGE, DEPARTMENT, CLASS = "college", "department", "class"
FRESH_DAYS = 14  # a class average older than this is not used (the card page computes it live)
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass(frozen=True)
class DomainWeek:
    """Means over a scope's students of each domain subtotal and of the total, as of one Sunday."""

    day: date
    means: tuple[float | None, ...]  # in DOMAINS order
    total: float | None
    students: int  # with a total

    @property
    def averages(self) -> dict[str, float | None]:
        """The means by domain name."""
        return dict(zip(DOMAINS, self.means, strict=True))


def scope_means(day: date, scores: Iterable[Scores]) -> DomainWeek:
    """`DomainWeek` of the given students' scores (those without a value left out of each mean)."""
    scores = list(scores)
    means = []
    for i in range(len(DOMAINS)):
        present = [x for s in scores if (x := s.subtotals[i]) is not None]
        means.append(round(fmean(present), 1) if present else None)
    totals = [s.total for s in scores if s.total is not None]
    return DomainWeek(day, tuple(means), round(fmean(totals), 1) if totals else None, len(totals))


def _row_of(scope: str, scope_id: int, term: Term, mark: str, week: DomainWeek) -> dict:
    return {"scope": scope, "scope_id": scope_id, "semester_key": term.key, "day": week.day, "catalogue": mark,
            "means": ",".join("" if m is None else repr(m) for m in week.means), "total": week.total,
            "students": week.students}


def _week_of(row: DigestMeans) -> DomainWeek:
    return DomainWeek(row.day, tuple(float(x) if x else None for x in row.means.split(",")), row.total,
                      row.students)


def record_week(session: Session, catalogue: Catalogue, term: Term, day: date, scores: Mapping[int, Scores],
                class_of: Mapping[int, int], department_of: Mapping[int, int]) -> bool:
    """Keep the means as of `day` of the college, each department and each class (students: `class_of`,
    student → class; classes: `department_of`, class → department) unless that day has them already
    (one indexed lookup; a concurrent run's rows win on the unique constraint). True when written."""
    mark = fingerprint(catalogue)
    if session.scalar(select(DigestMeans.id).where(
            DigestMeans.scope == COLLEGE, DigestMeans.scope_id == 0, DigestMeans.semester_key == term.key,
            DigestMeans.day == day).limit(1)) is not None:
        return False
    groups: dict[tuple[str, int], list[Scores]] = defaultdict(list)
    for sid, class_id in class_of.items():
        sc = scores.get(sid, EMPTY)
        groups[(COLLEGE, 0)].append(sc)
        groups[(CLASS, class_id)].append(sc)
        if class_id in department_of:
            groups[(DEPARTMENT, department_of[class_id])].append(sc)
    rows = [_row_of(scope, sid, term, mark, scope_means(day, group)) for (scope, sid), group in sorted(groups.items())]
    if rows:
        insert = _INSERTS[session.get_bind().dialect.name]
        session.execute(insert(DigestMeans.__table__).on_conflict_do_nothing(
            index_elements=["scope", "scope_id", "semester_key", "day"]), rows)
    return bool(rows)


def roster_groups(session: Session) -> tuple[dict[int, int], dict[int, int]]:
    """(student → class, class → department): the groups `record_week` takes."""
    return (dict(session.execute(select(Student.id, Student.class_id)).all()),
            dict(session.execute(select(SchoolClass.id, SchoolClass.department_id)).all()))


def scope_weeks(session: Session, catalogue: Catalogue, term: Term, scope: str, scope_id: int,
                latest: date) -> list[DomainWeek]:
    """A scope's kept weeks of the semester up to `latest`, oldest first (one index range)."""
    rows = session.scalars(select(DigestMeans).where(
        DigestMeans.scope == scope, DigestMeans.scope_id == scope_id, DigestMeans.semester_key == term.key,
        DigestMeans.day <= latest, DigestMeans.catalogue == fingerprint(catalogue)).order_by(DigestMeans.day))
    return [_week_of(r) for r in rows]


def class_week(session: Session, catalogue: Catalogue, term: Term, class_id: int, today: date) -> DomainWeek | None:
    """The class's newest kept week of the semester, if no older than FRESH_DAYS (None: none)."""
    row = session.scalars(select(DigestMeans).where(
        DigestMeans.scope == CLASS, DigestMeans.scope_id == class_id, DigestMeans.semester_key == term.key,
        DigestMeans.day <= today, DigestMeans.day >= today - timedelta(days=FRESH_DAYS),
        DigestMeans.catalogue == fingerprint(catalogue)).order_by(DigestMeans.day.desc()).limit(1)).first()
    return None if row is None else _week_of(row)


def fill_weeks(session: Session, catalogue: Catalogue, cal: Calendar, today: date) -> int:
    """Compute and keep every Sunday of `today`'s semester up to the digest's week that the college has
    no means for: the semester's live entries read once, each Sunday's point values (models.card
    point_values) scored for every student in one run of the card formula. For a small college (the
    demo); returns how many weeks were added."""
    week = digest_week(today, cal)
    term = week.term
    have = set(kept_days(session, catalogue, term))
    sundays = []
    sunday = week_bounds(term.start)[1]
    while sunday <= min(week.sunday, term.end):
        if sunday not in have:
            sundays.append(sunday)
        sunday += timedelta(days=7)
    if not sundays:
        return 0
    class_of, department_of = roster_groups(session)
    entries = load_entries(session, term, list(class_of))
    math = Formula(catalogue, catalogue.individual())
    added = 0
    for sunday in sundays:
        columns: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for sid, own in entries.items():
            for code, value in point_values(catalogue, own, sunday).items():
                columns[code][0].append(sid)
                columns[code][1].append(value.value)
        scores = math.scores(columns)
        added += bool(record_week(session, catalogue, term, sunday, scores, class_of, department_of))
    return added


def kept_days(session: Session, catalogue: Catalogue, term: Term) -> list[date]:
    """The Sundays of the semester the college has means for."""
    return list(session.scalars(select(DigestMeans.day).where(
        DigestMeans.scope == COLLEGE, DigestMeans.scope_id == 0, DigestMeans.semester_key == term.key,
        DigestMeans.catalogue == fingerprint(catalogue))))
