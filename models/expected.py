"""What each recorder is still expected to record in a period: the basis of the reminders.

Scopes follow models/authz.py (班主任 = head classes, 辅导员 = counselled classes, 任课教师 and
体育老师 = taught classes, 学工办 and 教研室 = their department's classes), computed for every
staff member at once; entries are counted with a few GROUP BY queries, never per student.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from models.catalogue import Catalogue, ScorePoint
from models.periods import PROGRAMME_YEARS, Calendar, Term, period_key
from models.schema import Department, SchoolClass, ScoreEntry, Staff, Student, TeachingAssignment

# Roles whose classes come from the teaching assignments (任课 sheet).
TEACHING_ROLES = ("任课教师", "体育老师")
# Roles whose classes are every class of their department.
DEPARTMENT_ROLES = ("学工办", "教研室")


@dataclass(frozen=True)
class Missing:
    """One class × point a recorder has not finished in the period."""

    class_name: str
    class_code: str
    point_short: str
    missing_students: int  # individual points: students without a live entry (0 for a class point)
    class_size: int
    point_code: str = ""
    is_class: bool = False  # a class point: the class itself has no live entry


@dataclass(frozen=True)
class _Class:
    id: int
    code: str
    name: str
    department_id: int
    grade: int | None


# The students' plan documents (学业计划, 个人发展规划, 职业生涯规划) are reminded by the
# plan_documents job, which names the students; the count reminders leave them out.
PLAN_DOCUMENTS = ("A01", "B01", "C01")


def expected_points(catalogue: Catalogue, period: str) -> list[ScorePoint]:
    """Points of a 采分时点 that someone must type in.

    Derived class points are computed, and count points (频次) record occurrences, so a
    student without an entry simply had none: neither is ever "missing".
    """
    return [p for p in catalogue.points
            if p.period == period and p.derived is None and p.kind != "count" and p.recorders
            and p.code not in PLAN_DOCUMENTS]


def is_final_year(grade: int | None, term: Term) -> bool:
    """Is a class of this 年级 in its graduation year during `term`? (unknown grade: no)."""
    return grade is not None and int(term.year[:4]) == grade + PROGRAMME_YEARS - 1


def recorder_scopes(session: Session) -> dict[str, dict[int, set[int]]]:
    """role → staff id → class ids that staff member records for in that role (as in authz)."""
    staff_rows = session.execute(select(Staff.id, Staff.staff_no, Staff.roles, Staff.department_id)).all()
    class_rows = session.execute(select(
        SchoolClass.id, SchoolClass.department_id, SchoolClass.head_teacher_id, SchoolClass.counsellor_id)).all()
    taught = session.execute(select(TeachingAssignment.staff_id, TeachingAssignment.class_id).distinct()).all()
    headed = session.execute(select(Department.id, Department.head_staff_no)
                             .where(Department.head_staff_no.is_not(None))).all()

    scopes: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    by_department: dict[int, set[int]] = defaultdict(set)
    for c in class_rows:
        by_department[c.department_id].add(c.id)
        # The class sheet grants the role it names, even if 角色 forgot it.
        if c.head_teacher_id is not None:
            scopes["班主任"][c.head_teacher_id].add(c.id)
        if c.counsellor_id is not None:
            scopes["辅导员"][c.counsellor_id].add(c.id)
    roles = {s.id: frozenset(r for r in (s.roles or "").split(",") if r) for s in staff_rows}
    for staff_id, class_id in taught:
        for role in TEACHING_ROLES:
            if role in roles.get(staff_id, ()):
                scopes[role][staff_id].add(class_id)
    headed_by: dict[str, set[int]] = defaultdict(set)
    for dept_id, staff_no in headed:
        headed_by[staff_no].add(dept_id)
    for s in staff_rows:
        departments = headed_by.get(s.staff_no, set()) | ({s.department_id} if s.department_id else set())
        for role in DEPARTMENT_ROLES:
            if role in roles[s.id]:
                for dept_id in departments:
                    scopes[role][s.id] |= by_department.get(dept_id, set())
    return scopes


def _class_sizes(session: Session) -> dict[int, int]:
    rows = session.execute(select(Student.class_id, func.count(Student.id)).group_by(Student.class_id))
    return {class_id: n for class_id, n in rows}


def _recorded_students(session: Session, codes: list[str], key: str) -> dict[tuple[int, str], int]:
    """(class id, point code) → students of the class with a live entry of the point in period `key`."""
    if not codes:
        return {}
    rows = session.execute(
        select(Student.class_id, ScoreEntry.point_code, func.count(distinct(ScoreEntry.student_id)))
        .join(Student, Student.id == ScoreEntry.student_id)
        .where(ScoreEntry.point_code.in_(codes), ScoreEntry.period_key == key,
               ScoreEntry.revoked_at.is_(None))
        .group_by(Student.class_id, ScoreEntry.point_code)
    )
    return {(class_id, code): n for class_id, code, n in rows}


def _recorded_classes(session: Session, codes: list[str], key: str) -> set[tuple[int, str]]:
    """(class id, point code) pairs with a live class entry in period `key`."""
    if not codes:
        return set()
    rows = session.execute(
        select(ScoreEntry.class_id, ScoreEntry.point_code)
        .where(ScoreEntry.class_id.is_not(None), ScoreEntry.point_code.in_(codes),
               ScoreEntry.period_key == key, ScoreEntry.revoked_at.is_(None))
        .group_by(ScoreEntry.class_id, ScoreEntry.point_code)
    )
    return {(class_id, code) for class_id, code in rows}


def missing_entries(session: Session, catalogue: Catalogue, calendar: Calendar, period: str, day: date,
                    *, include_complete: bool = False) -> dict[int, list[Missing]]:
    """staff id → what that recorder still has to record in the period of `period` containing `day`.

    Only recorders with something missing are returned, unless `include_complete` (then every
    recorder in scope is a key, with an empty list when done). Lists are ordered by class code
    and then by the catalogue's order of points.
    """
    term = calendar.term_for(day)
    if period == "第一学期中" and term.term != 1:
        return {}
    points = expected_points(catalogue, period)
    if not points:
        return {}
    key = period_key(period, day, calendar)
    classes = {c.id: c for c in (
        _Class(r.id, r.code, r.name, r.department_id, r.grade) for r in session.execute(
            select(SchoolClass.id, SchoolClass.code, SchoolClass.name, SchoolClass.department_id,
                   SchoolClass.grade)))}
    if period == "毕业前":
        classes = {i: c for i, c in classes.items() if is_final_year(c.grade, term)}
    sizes = _class_sizes(session)
    individual = [p.code for p in points if not p.is_class]
    for_class = [p.code for p in points if p.is_class]
    students_done = _recorded_students(session, individual, key)
    classes_done = _recorded_classes(session, for_class, key)

    def gap(klass: _Class, point: ScorePoint) -> Missing | None:
        size = sizes.get(klass.id, 0)
        if point.is_class:
            if (klass.id, point.code) in classes_done:
                return None
            return Missing(klass.name, klass.code, point.short, 0, size, point.code, True)
        missing = size - students_done.get((klass.id, point.code), 0)
        if missing <= 0:
            return None
        return Missing(klass.name, klass.code, point.short, missing, size, point.code, False)

    order = {p.code: i for i, p in enumerate(catalogue.points)}
    scopes = recorder_scopes(session)
    out: dict[int, list[Missing]] = {}
    for point in points:
        for role in point.recorders:
            for staff_id, class_ids in scopes.get(role, {}).items():
                mine = [c for c in (classes.get(i) for i in class_ids) if c is not None]
                if not mine:
                    continue
                items = out.setdefault(staff_id, [])
                items.extend(m for m in (gap(c, point) for c in mine) if m is not None)
    result: dict[int, list[Missing]] = {}
    for staff_id, items in out.items():
        unique = sorted(set(items), key=lambda m: (m.class_code, order[m.point_code]))
        if unique or include_complete:
            result[staff_id] = unique
    return result
