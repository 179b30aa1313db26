"""A read-mostly snapshot of the roster and calendar, shared by the messages a process handles.

Building it costs a few set-based queries (however many people the college has); a message
then needs none to find its sender, a class or a student. A roster change (import, demo) is
seen within `ttl` seconds: on PostgreSQL a one-row digest of the roster's tables tells whether
anything changed, and the snapshot is rebuilt only then (a rebuild is ~100 ms of a worker's CPU
at 8,000 students, during which, under gevent, the worker's other requests wait).
"""

from __future__ import annotations

import getpass
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

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


@dataclass(frozen=True)
class Identity:
    """Who a sender id names: one person's `Actor`, nobody, or a roster that names two (ambiguous)."""

    actor: Actor | None
    ambiguous: bool = False  # the id could be more than one person: nobody is matched


NOBODY = Identity(None)
AMBIGUOUS = Identity(None, ambiguous=True)


Person = tuple[str, int]  # ("staff" | "student", id)


@dataclass
class _Collisions:
    """Lower-cased 企业微信账号 -> its owners; lower-cased 工号/学号 -> the people it names."""

    accounts: defaultdict[str, set[Person]] = field(default_factory=lambda: defaultdict(set))
    ids: defaultdict[str, set[Person]] = field(default_factory=lambda: defaultdict(set))
    with_account: set[Person] = field(default_factory=set)


@dataclass
class Directory:
    """Classes, students, staff and the calendar as plain values; senders become `Actor`s on demand."""

    classes: dict[int, ClassInfo]
    class_keys: dict[str, ClassInfo]
    students_by_class: dict[int, list[StudentInfo]]
    students_by_no: dict[str, StudentInfo]
    calendar: Calendar
    staff_by_account: dict[str, StaffFacts] = field(default_factory=dict)  # by 企业微信账号
    students_by_userid: dict[str, StudentInfo] = field(default_factory=dict)  # by 企业微信账号
    staff_by_no: dict[str, StaffFacts] = field(default_factory=dict)  # by 工号
    classes_by_department: dict[int, set[int]] = field(default_factory=dict)
    fingerprint: str | None = None  # `roster_fingerprint` when it was built
    checked_at: float = field(default_factory=time.monotonic)  # built, or found current, then
    _identities: dict[tuple[str, str | None], Identity] = field(default_factory=dict)
    _collisions: _Collisions | None = None
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
        staff_by_no, staff_by_account = _staff_facts(session, class_rows)
        return cls(classes, keys, dict(by_class), by_no, load_calendar(session), staff_by_account, by_userid,
                   staff_by_no, dict(by_department), fingerprint)

    def identify(self, userid: str, console_user: str | None = None) -> Identity:
        """Who sent a message (PRODUCT.md §5, under the roster workbook).

        `console_user` is None on a WeChat channel: `userid` is FromUserName and matches a
        企业微信账号 exactly; a 工号 or 学号 stands in only for a person whose 企业微信账号 is
        empty, and only when it is nobody else's 企业微信账号 and names no one else (compared
        ignoring case, as WeCom compares userids). On the console, `console_user` is the operating
        system user running it: a 工号 or 学号 then works for anyone, and the audit rows the
        person writes name that user. An id that names two people matches nobody, on any channel.
        """
        key = (userid, console_user)
        with self._lock:
            found = self._identities.get(key)
        if found is None:
            found = self._identify(userid, console_user)
            with self._lock:
                self._identities[key] = found
        return found

    def actor(self, userid: str, console_user: str | None = None) -> Actor | None:
        """`identify(...).actor`: the sender, or None (unknown or ambiguous)."""
        return self.identify(userid, console_user).actor

    def _identify(self, userid: str, console_user: str | None) -> Identity:
        staff = self.staff_by_account.get(userid)
        student = self.students_by_userid.get(userid)
        if staff is None and student is None:  # not an account: perhaps a 工号 or 学号
            staff, student = self.staff_by_no.get(userid), self.students_by_no.get(userid)
            person: Person
            if staff is not None:
                person = ("staff", staff.id)
            elif student is not None:
                person = ("student", student.id)
            else:
                return NOBODY
            index = self._collision_index()
            if len(index.ids.get(userid.lower(), ())) > 1:
                return AMBIGUOUS
            if console_user is None:
                if index.accounts.get(userid.lower(), set()) - {person}:
                    return AMBIGUOUS  # someone else's account (in another case): never theirs to borrow
                if person in index.with_account:
                    return NOBODY  # they have an account of their own, and this is not it
        if staff is not None and student is not None:
            return AMBIGUOUS
        if staff is not None:
            actor = staff_actor(userid, staff, self._department_classes)
        else:
            assert student is not None
            actor = student_actor(userid, student.name, student.id, student.class_id)
        actor.console_user = console_user
        return Identity(actor)

    def _collision_index(self) -> _Collisions:
        with self._lock:
            if self._collisions is not None:
                return self._collisions
        found = _Collisions()
        for account, facts in self.staff_by_account.items():
            found.accounts[account.lower()].add(("staff", facts.id))
        for account, student in self.students_by_userid.items():
            found.accounts[account.lower()].add(("student", student.id))
        found.with_account = {p for owners in found.accounts.values() for p in owners}
        for no, facts in self.staff_by_no.items():
            found.ids[no.lower()].add(("staff", facts.id))
        for no, student in self.students_by_no.items():
            found.ids[no.lower()].add(("student", student.id))
        with self._lock:
            self._collisions = found
        return found

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


def _staff_facts(session: Session, class_rows: list) -> tuple[dict[str, StaffFacts], dict[str, StaffFacts]]:
    """Every staff member's facts, by 工号 and by 企业微信账号."""
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
    return by_no, by_account


@cache
def console_user() -> str:
    """The operating-system user running this process (the console's audit rows name them)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return f"uid{os.getuid()}"


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
