"""A read-mostly snapshot of the roster and calendar, shared by the messages a process handles.

Building it costs a few queries; a message then needs none to find its sender, a
class or a student. A roster change (import, demo) is seen within `ttl` seconds.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.authz import Actor, load_actor
from models.periods import Calendar
from models.schema import SchoolClass, Student
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
    """Classes, students and the calendar as plain values, with senders looked up on demand."""

    classes: dict[int, ClassInfo]
    class_keys: dict[str, ClassInfo]
    students_by_class: dict[int, list[StudentInfo]]
    students_by_no: dict[str, StudentInfo]
    calendar: Calendar
    built_at: float = field(default_factory=time.monotonic)
    _actors: dict[str, Actor | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, session: Session) -> Directory:
        classes = {
            r.id: ClassInfo(r.id, r.code, r.name, r.grade, r.department_id)
            for r in session.execute(select(SchoolClass.id, SchoolClass.code, SchoolClass.name,
                                            SchoolClass.grade, SchoolClass.department_id))
        }
        keys: dict[str, ClassInfo] = {}
        for c in classes.values():
            keys[c.code] = c
        for c in classes.values():
            keys.setdefault(c.name, c)
        by_class: dict[int, list[StudentInfo]] = defaultdict(list)
        by_no: dict[str, StudentInfo] = {}
        rows = session.execute(select(Student.id, Student.student_no, Student.name, Student.class_id)
                               .order_by(Student.student_no))
        for r in rows:
            s = StudentInfo(r.id, r.student_no, r.name, r.class_id, classes[r.class_id])
            by_class[r.class_id].append(s)
            by_no[r.student_no] = s
        return cls(classes, keys, dict(by_class), by_no, load_calendar(session))

    def actor(self, session: Session, userid: str) -> Actor | None:
        """The sender, loaded once per snapshot."""
        with self._lock:
            if userid in self._actors:
                return self._actors[userid]
        actor = load_actor(session, userid)
        with self._lock:
            self._actors[userid] = actor
        return actor

    def students_in(self, class_ids: set[int] | None) -> list[StudentInfo]:
        """Students of the given classes (None: the whole college)."""
        if class_ids is None:
            return list(self.students_by_no.values())
        return [s for cid in class_ids for s in self.students_by_class.get(cid, ())]


class DirectoryCache:
    """One `Directory` per process, rebuilt when older than `ttl` seconds (0: every message)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._current: Directory | None = None
        self._lock = threading.Lock()

    def get(self, session: Session) -> Directory:
        current = self._current
        if current is not None and time.monotonic() - current.built_at < self.ttl:
            return current
        with self._lock:
            current = self._current
            if current is None or time.monotonic() - current.built_at >= self.ttl:
                current = self._current = Directory.build(session)
            return current

    def invalidate(self) -> None:
        """Forget the snapshot (after a roster change made by this process)."""
        self._current = None
