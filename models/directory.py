"""A read-mostly snapshot of the roster and calendar, shared by the messages a process handles.

Building it costs a few set-based queries (however many people the college has); a message
then needs none to find its sender, a class or a student. A roster change (import, demo) is
seen within `ttl` seconds: on PostgreSQL a one-row digest of the roster's tables tells whether
anything changed, and the snapshot is rebuilt only then (a rebuild is ~100 ms of a worker's CPU
at 8,000 students, during which, under gevent, the worker's other requests wait).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models.authz import Actor, StaffFacts, staff_actor, student_actor
from models.periods import Calendar
from models.schema import Department, SchoolClass, Semester, Staff, Student, TeachingAssignment
from models.scores import load_calendar


@dataclass(frozen=True)
class ClassInfo:
    id: int
    code: str
    name: str
    grade: int | None
    department_id: int


@dataclass(frozen=True)
class StudentInfo:
    id: int
    student_no: str
    name: str
    class_id: int
    school_class: ClassInfo


@dataclass
class Directory:
    """Classes, students, staff and the calendar as plain values; senders become `Actor`s on demand."""

    classes: dict[int, ClassInfo]
    class_keys: dict[str, ClassInfo]
    students_by_class: dict[int, list[StudentInfo]]
    students_by_no: dict[str, StudentInfo]
    calendar: Calendar
    staff_by_key: dict[str, StaffFacts] = field(default_factory=dict)  # 企业微信账号 and 工号
    students_by_userid: dict[str, StudentInfo] = field(default_factory=dict)
    classes_by_department: dict[int, set[int]] = field(default_factory=dict)
    fingerprint: str | None = None  # `roster_fingerprint` when it was built
    checked_at: float = field(default_factory=time.monotonic)  # built, or found current, then
    _actors: dict[str, Actor | None] = field(default_factory=dict)
    _class_rosters: dict[int, tuple[dict, dict]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, session: Session, fingerprint: str | None = None) -> Directory:
        class_rows = session.execute(select(SchoolClass.id, SchoolClass.code, SchoolClass.name, SchoolClass.grade,
                                            SchoolClass.department_id, SchoolClass.head_teacher_id,
                                            SchoolClass.counsellor_id)).all()
        classes = {r.id: ClassInfo(r.id, r.code, r.name, r.grade, r.department_id) for r in class_rows}
        keys: dict[str, ClassInfo] = {}
        for c in classes.values():
            keys[c.code] = c
        for c in classes.values():
            keys.setdefault(c.name, c)
        by_class: dict[int, list[StudentInfo]] = defaultdict(list)
        by_no: dict[str, StudentInfo] = {}
        by_userid: dict[str, StudentInfo] = {}
        rows = session.execute(select(Student.id, Student.student_no, Student.name, Student.class_id,
                                      Student.wecom_userid).order_by(Student.student_no))
        for r in rows:
            s = StudentInfo(r.id, r.student_no, r.name, r.class_id, classes[r.class_id])
            by_class[r.class_id].append(s)
            by_no[r.student_no] = s
            if r.wecom_userid:
                by_userid[r.wecom_userid] = s
        by_department: dict[int, set[int]] = defaultdict(set)
        for c in classes.values():
            by_department[c.department_id].add(c.id)
        return cls(classes, keys, dict(by_class), by_no, load_calendar(session), _staff_facts(session, class_rows),
                   by_userid, dict(by_department), fingerprint)

    def actor(self, userid: str) -> Actor | None:
        """The sender by 企业微信账号, 工号 or 学号 (in that order of precedence), or None."""
        with self._lock:
            if userid in self._actors:
                return self._actors[userid]
        facts = self.staff_by_key.get(userid)
        if facts is not None:
            actor = staff_actor(userid, facts, self._department_classes)
        elif (student := self.students_by_userid.get(userid) or self.students_by_no.get(userid)) is not None:
            actor = student_actor(userid, student.name, student.id, student.class_id)
        else:
            actor = None
        with self._lock:
            self._actors[userid] = actor
        return actor

    def _department_classes(self, departments: set[int]) -> set[int]:
        return {c for d in departments for c in self.classes_by_department.get(d, ())}

    def class_roster(self, class_id: int) -> tuple[dict[str, StudentInfo], dict[str, list[StudentInfo]]]:
        """One class's students by 学号 and by name (built once per snapshot; do not modify)."""
        with self._lock:
            found = self._class_rosters.get(class_id)
            if found is None:
                by_no: dict[str, StudentInfo] = {}
                by_name: dict[str, list[StudentInfo]] = {}
                for s in self.students_by_class.get(class_id, ()):
                    by_no[s.student_no] = s
                    by_name.setdefault(s.name, []).append(s)
                found = self._class_rosters[class_id] = (by_no, by_name)
            return found

    def students_in(self, class_ids: set[int] | None) -> list[StudentInfo]:
        """Students of the given classes (None: the whole college)."""
        if class_ids is None:
            return list(self.students_by_no.values())
        return [s for cid in class_ids for s in self.students_by_class.get(cid, ())]


def _staff_facts(session: Session, class_rows: list) -> dict[str, StaffFacts]:
    """Every staff member's facts, keyed by 企业微信账号 and by 工号 (an account wins over a 工号)."""
    head: dict[int, set[int]] = defaultdict(set)
    counsel: dict[int, set[int]] = defaultdict(set)
    for r in class_rows:
        if r.head_teacher_id:
            head[r.head_teacher_id].add(r.id)
        if r.counsellor_id:
            counsel[r.counsellor_id].add(r.id)
    taught: dict[int, set[int]] = defaultdict(set)
    for staff_id, class_id in session.execute(select(TeachingAssignment.staff_id, TeachingAssignment.class_id)):
        taught[staff_id].add(class_id)
    headed: dict[str, set[int]] = defaultdict(set)
    for dept_id, staff_no in session.execute(select(Department.id, Department.head_staff_no)):
        if staff_no:
            headed[staff_no].add(dept_id)
    by_no: dict[str, StaffFacts] = {}
    by_account: dict[str, StaffFacts] = {}
    for r in session.execute(select(Staff.id, Staff.staff_no, Staff.name, Staff.roles, Staff.department_id,
                                    Staff.wecom_userid)):
        facts = StaffFacts(r.id, r.staff_no, r.name, frozenset(x for x in r.roles.split(",") if x), r.department_id,
                           frozenset(head[r.id]), frozenset(counsel[r.id]), frozenset(taught[r.id]),
                           frozenset(headed[r.staff_no]))
        by_no[r.staff_no] = facts
        if r.wecom_userid:
            by_account[r.wecom_userid] = facts
    return by_no | by_account


# Every table a Directory is read from.
ROSTER_TABLES = tuple(m.__tablename__ for m in (Department, SchoolClass, Staff, Student, TeachingAssignment, Semester))


def roster_fingerprint(session: Session) -> str | None:
    """A digest of every row a `Directory` is built from: it differs once anything in them has
    changed. PostgreSQL only (None elsewhere: always rebuild); one row back, whatever the size."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    parts = ", ".join(f"(SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {name} t)"
                      for name in ROSTER_TABLES)
    return session.execute(text(f"SELECT concat_ws(' ', {parts})")).scalar_one()


class DirectoryCache:
    """One `Directory` per process, checked when older than `ttl` seconds (0: every message) and
    rebuilt if the roster changed."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._current: Directory | None = None
        self._lock = threading.Lock()

    def get(self, sessions: Callable[[], Session]) -> Directory:
        """The current snapshot; a session is opened only to check or rebuild it."""
        current = self._current
        if current is not None and time.monotonic() - current.checked_at < self.ttl:
            return current
        with self._lock:
            current = self._current
            if current is None or time.monotonic() - current.checked_at >= self.ttl:
                with sessions() as session:
                    # Before the build reads: a change committed in between is seen by the next check.
                    mark = roster_fingerprint(session)
                    if current is not None and mark is not None and mark == current.fingerprint:
                        current.checked_at = time.monotonic()
                    else:
                        current = self._current = Directory.build(session, mark)
            return current

    def invalidate(self) -> None:
        """Forget the snapshot (after a roster change made by this process)."""
        self._current = None
