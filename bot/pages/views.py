"""What each page shows a viewer: the chat's checks (models/authz.py) and the chat's numbers
(models/cards.py, models/digest), with the pages' extra values (models/pages.py). A refusal is a
reason string ("out_of_scope", "not_found", "students_own", "not_leader"); the routes pick the page.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date
from weakref import WeakKeyDictionary
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.card import LatestEntry, mean_unit
from models.authz import FULL, Actor, View, class_view, student_view
from models.cards import class_card, student_card
from models.catalogue import DOMAINS, Catalogue
from models.digest.college import CollegeData, build_college, overview_is_quick
from models.digest.recipients import scope_of
from models.digest.summary import digest_context
from models.digest.week import DigestWeek, digest_week
from models.digest.weeks import COLLEGE, DEPARTMENT, DomainWeek, scope_weeks
from models.pages import (
    class_average,
    class_figures,
    class_student_ids,
    digest_inputs,
    histogram,
    next_step,
    roster_mark,
    student_history,
    students_behind,
    week_ends,
)
from models.periods import Calendar
from models.risk.rules import OPEN, rule_book
from models.risk.warnings import warning_history
from models.schema import SchoolClass, Staff, Student
from models.service import Service

DIGEST_ROLES = frozenset({"系部主任", "院领导"})
# Without a recent digest state the digest is computed from the whole semester's entries: quick
# enough for a college this small, else the page says the figures are being prepared (as 本周概况 does).
SLOW_DIGEST_STUDENTS = 3000


def _by_month(service: Service) -> bool:
    return service.catalogue.formula.compare == "month"


def own_card(service: Service, session: Session, actor: Actor) -> dict | None:
    """The viewer's own card (a student) or their child's (a parent); None for anyone else."""
    mine = actor.student_id if actor.is_student else actor.parent_of
    student = None if mine is None else session.get(Student, mine)
    if student is None:
        return None
    # student_view: the student's own card in full; a parent's, never a sensitive point.
    return _card(service, session, actor, student, student_view(actor, student.id, student.class_id))


def card_of(service: Service, session: Session, actor: Actor, student_no: str) -> dict | str:
    """A student's card by 学号 as `actor` may see it, or why not."""
    student = session.scalar(select(Student).where(Student.student_no == student_no))
    if not actor.is_staff:
        mine = actor.student_id if actor.is_student else actor.parent_of
        if student is None or student.id != mine:
            return "students_own"
        return own_card(service, session, actor) or "students_own"
    if student is None:
        return "not_found"
    view = student_view(actor, student.id, student.class_id)
    if not view.domains:
        return "out_of_scope"
    return _card(service, session, actor, student, view)


def _card(service: Service, session: Session, actor: Actor, student: Student, view: View) -> dict:
    """Everything the card page shows, within `view`."""
    catalogue, today = service.catalogue, service.today()
    cal = service.directory.get(service.sessions).calendar
    card, latest = student_card(session, catalogue, cal, student.id, today, view.shows)
    history = student_history(session, catalogue, cal, student.id, today, view.shows)
    figures = class_average(session, catalogue, cal, student.class_id, today)
    recorders = dict(session.execute(select(Staff.id, Staff.name).where(
        Staff.id.in_({e.recorder_id for e in latest if e.recorder_id}))).all())
    latest_entries = [
        LatestEntry(e.occurred_on, catalogue.by_code[e.point_code].short,
                    catalogue.by_code[e.point_code].display_value(e.value), recorders.get(e.recorder_id))
        for e in latest]
    warnings = []
    if actor.is_staff:
        warnings = [h for h in warning_history(session, rule_book(service.settings, catalogue), student.id, view,
                                               ZoneInfo(service.settings.timezone)) if h.status == OPEN]
    domains = [d for d in card.domains if d.domain in view.domains]
    return {
        "name": student.name, "student_no": student.student_no, "class_name": student.school_class.name,
        "class_code": student.school_class.code, "term": cal.term_for(today).label, "today": today,
        "card": card, "domains": domains, "full": view.domains == FULL, "by_month": _by_month(service),
        "averages": figures.averages, "class_total": figures.mean_total, "averages_day": figures.day,
        "weeks": history.weeks, "semester_added": history.semester_added,
        "trends": [t for t in history.trends if t.point.domain in view.domains],
        "latest": latest_entries, "mean_unit": mean_unit, "warnings": warnings,
        "staff": actor.is_staff, "step": next_step(history.trends), "own": actor.student_id == student.id,
        "class_link": class_view(actor, student.class_id).domains != frozenset(),
    }


def class_of(service: Service, session: Session, actor: Actor, code: str) -> dict | str:
    """A class's page as `actor` may see it, or why not."""
    klass = session.scalar(select(SchoolClass).where(SchoolClass.code == code))
    if not actor.is_staff:
        return "out_of_scope"
    if klass is None:
        return "not_found"
    view = class_view(actor, klass.id)
    if not view.domains:
        return "out_of_scope"
    catalogue, today = service.catalogue, service.today()
    cal = service.directory.get(service.sessions).calendar
    card = class_card(session, catalogue, cal, klass.id, today, view.shows)
    figures = class_figures(session, catalogue, cal, klass.id, today)
    ids = class_student_ids(session, klass.id)
    # Names only for a viewer who may open the students' cards (院领导: aggregates only).
    student_scope = student_view(actor, ids[0], klass.id) if ids else View(frozenset(), False)
    names = bool(student_scope.domains)
    week_key, behind = students_behind(session, catalogue, cal, klass.id, today,
                                       student_scope.shows if names else view.shows)
    students = []
    if names:
        students = [{"no": s.student_no, "name": s.name, "total": figures.totals.get(s.id)}
                    for s in session.scalars(select(Student).where(Student.class_id == klass.id)
                                             .order_by(Student.student_no))]
    return {
        "name": klass.name, "code": klass.code, "size": len(ids), "term": cal.term_for(today).label,
        "today": today, "card": card, "domains": [d for d in card.domains if d.domain in view.domains],
        "full": view.domains == FULL, "by_month": _by_month(service), "mean_unit": mean_unit,
        "averages": figures.averages, "class_total": figures.mean_total,
        "bins": histogram(figures.totals.values()), "scored": sum(1 for t in figures.totals.values() if t is not None),
        "behind": behind if names else [], "behind_count": len(behind), "week_key": week_key,
        "names": names, "students": students,
    }


@dataclass
class _Digest:
    """The digest's data as of one day and one set of inputs, with each scope's page values once made."""

    key: tuple
    made: float
    ready: bool
    data: CollegeData | None
    pages: dict[int | None, dict] = field(default_factory=dict)


class DigestCache:
    """The dashboard's digest, per process: built once (about a second at 15,000 students), then
    served while the day and what the digest is computed from (models.pages.digest_inputs, the
    roster's fingerprint) stay the same, so it always shows what 本周概况 would compute. Kept at
    most MAX_AGE seconds, for what those numbers cannot see (a plan task's deadline edited)."""

    MAX_AGE = 600.0

    def __init__(self) -> None:
        self._current: _Digest | None = None
        self._lock = threading.Lock()

    def page(self, service: Service, session: Session, department_id: int | None) -> dict:
        """The dashboard's values for the college (None) or one department."""
        catalogue, today = service.catalogue, service.today()
        directory = service.directory.get(service.sessions)
        cal = directory.calendar
        week = digest_week(today, cal)
        inputs = digest_inputs(session, week)
        roster = directory.fingerprint or roster_mark(session)
        key = (today, inputs, roster)
        with self._lock:
            found = self._current
            if found is None or inputs is None or found.key != key or \
                    time.monotonic() - found.made > self.MAX_AGE:
                found = self._build(service, session, cal, today, key)
                if inputs is not None:
                    self._current = found
            if not found.ready:
                return {"ready": False, "week": week, "scope_name": None, "college": department_id is None}
            if department_id not in found.pages:
                found.pages[department_id] = _scope_page(session, catalogue, week, found.data, department_id)
            return found.pages[department_id]

    @staticmethod
    def _build(service: Service, session: Session, cal: Calendar, today: date, key: tuple) -> _Digest:
        catalogue = service.catalogue
        quick = overview_is_quick(session, catalogue, cal, today)
        if not quick and len(session.scalars(select(Student.id).limit(SLOW_DIGEST_STUDENTS)).all()) \
                >= SLOW_DIGEST_STUDENTS:
            return _Digest(key, time.monotonic(), False, None)
        data = build_college(session, catalogue, cal, today, ZoneInfo(service.settings.timezone),
                             rule_book(service.settings, catalogue))
        return _Digest(key, time.monotonic(), True, data)


_caches: WeakKeyDictionary[Service, DigestCache] = WeakKeyDictionary()
_caches_lock = threading.Lock()


def digest_cache(service: Service) -> DigestCache:
    """The service's dashboard cache (one per service object: one per process)."""
    with _caches_lock:
        return _caches.setdefault(service, DigestCache())


def dashboard(service: Service, session: Session, actor: Actor) -> dict | str:
    """The weekly digest for the viewer's scope (as 本周概况 computes it), and the domain means of
    each week of the semester the weekly job kept (the series); or why not."""
    if not (actor.is_staff and actor.roles & DIGEST_ROLES):
        return "not_leader"
    person = scope_of(session, actor.staff_id)
    if person is None:
        return "not_leader"
    return digest_cache(service).page(service, session, person.department_id)


def _scope_page(session: Session, catalogue: Catalogue, week: DigestWeek, data: CollegeData,
                department_id: int | None) -> dict:
    """The dashboard's values for one scope from the college's digest data."""
    digest = digest_context(data, department_id)
    scope, scope_id = (COLLEGE, 0) if department_id is None else (DEPARTMENT, department_id)
    # The weeks the weekly job kept; the digest's own two weeks are its own figures.
    stored = scope_weeks(session, catalogue, week.term, scope, scope_id, week.sunday)
    series = _series(stored, digest, week.sunday, week.previous_sunday if week.previous_sunday >= week.term.start
                     else None)
    return {"ready": True, "week": week, "d": digest, "series": series, "domain_names": DOMAINS,
            "college": department_id is None, "semester_weeks": len(week_ends(week.term, week.sunday))}


def _series(stored: list[DomainWeek], digest: dict, sunday: date, previous: date | None) -> list[DomainWeek]:
    """The kept weeks' means with the digest's own two weeks (the week's Sunday and the one before, None
    when that is of the previous semester), the digest's figures winning on the same day."""
    now = tuple(d["mean"] for d in digest["domains"])
    before = tuple(None if d["mean"] is None or d["change"] is None else round(d["mean"] - d["change"], 1)
                   for d in digest["domains"])
    total = digest["total"]
    total_before = None if total["mean"] is None or total["change"] is None else round(
        total["mean"] - total["change"], 1)
    by_day = {w.day: w for w in stored}
    if previous is not None:
        by_day[previous] = DomainWeek(previous, before, total_before, 0)
    by_day[sunday] = DomainWeek(sunday, now, total["mean"], digest["students"])
    return [by_day[d] for d in sorted(by_day)]
