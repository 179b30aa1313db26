"""Who may record what for whom, and who sees which card (PRODUCT.md §2).

An `Actor` is built once per message; the rules below are pure functions of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.catalogue import DOMAINS, ScorePoint
from models.schema import Department, SchoolClass, Staff, Student, TeachingAssignment

FULL = frozenset(DOMAINS)
CAREER_ONLY = frozenset({"职业发展"})
# Roles that see sensitive points of the students in their scope.
SENSITIVE_ROLES = frozenset({"班主任", "辅导员", "学工办"})
AUDIT_NAME_MAX = 64  # audit_log.actor and the other actor columns


@dataclass(frozen=True)
class View:
    """What a viewer sees of one student's card."""

    domains: frozenset[str]
    sensitive: bool

    def shows(self, point: ScorePoint) -> bool:
        return point.domain in self.domains and (self.sensitive or not point.sensitive)


NO_VIEW = View(frozenset(), False)


@dataclass
class Actor:
    """The sender of a message with every scope the rules need."""

    userid: str
    name: str
    staff_id: int | None = None
    student_id: int | None = None
    student_class_id: int | None = None
    roles: frozenset[str] = frozenset()
    department_id: int | None = None
    head_classes: set[int] = field(default_factory=set)
    counsel_classes: set[int] = field(default_factory=set)
    taught_classes: set[int] = field(default_factory=set)
    department_classes: set[int] = field(default_factory=set)
    console_user: str | None = None  # the operating-system user, when the sender is at the console
    follower: bool = False  # an Official Account follower (known by openid, bound or not)
    parent_of: int | None = None  # a follower bound as a parent: the child's student id

    @property
    def is_staff(self) -> bool:
        return self.staff_id is not None

    @property
    def is_student(self) -> bool:
        return self.student_id is not None

    @property
    def is_parent(self) -> bool:
        return self.parent_of is not None

    @property
    def is_unbound_follower(self) -> bool:
        """A follower not bound to any student: they may only bind."""
        return self.follower and not self.is_student and not self.is_parent

    @property
    def own_card(self) -> int | None:
        """The student whose card is "mine": the student's own, or a parent's child's."""
        return self.student_id if self.student_id is not None else self.parent_of

    @property
    def audit_name(self) -> str:
        """Who made a change, as audit rows record it (64 characters at most): "王芳(wangfang)", and
        from the console "王芳(wangfang，控制台：root)"."""
        tail = ")" if self.console_user is None else f"，控制台：{self.console_user})"
        return f"{self.name}({self.userid}"[:AUDIT_NAME_MAX - len(tail)] + tail

    def classes_for_role(self, role: str) -> set[int] | None:
        """Classes a role acts on; None means every class of the college."""
        if role not in self.roles:
            return set()
        if role == "班主任":
            return self.head_classes
        if role == "辅导员":
            return self.counsel_classes
        if role in ("任课教师", "体育老师"):
            return self.taught_classes
        if role in ("学工办", "教研室", "系部主任"):
            return self.department_classes
        if role == "院领导":
            return None
        return set()


def acts_on(actor: Actor, roles: tuple[str, ...] | frozenset[str], class_id: int) -> bool:
    """Does the actor hold one of `roles` with `class_id` in that role's scope?"""
    for role in roles:
        scope = actor.classes_for_role(role)
        if scope is None or class_id in scope:
            return True
    return False


def may_record(actor: Actor, point: ScorePoint, class_id: int) -> bool:
    """Role × scope × the point's recorder."""
    return point.derived is None and acts_on(actor, point.recorders, class_id)


def recordable_classes(actor: Actor, point: ScorePoint) -> set[int] | None:
    """Every class in which `actor` may record `point` (None: all)."""
    out: set[int] = set()
    for role in point.recorders:
        scope = actor.classes_for_role(role)
        if scope is None:
            return None
        out |= scope
    return out


def student_view(actor: Actor, student_id: int, class_id: int) -> View:
    """How much of a student's card `actor` may see."""
    if actor.student_id == student_id:
        return View(FULL, True)
    if actor.parent_of == student_id:
        return View(FULL, False)  # a parent sees the child's card, never a sensitive point
    if not actor.is_staff:
        return NO_VIEW
    domains: set[str] = set()
    sensitive = False
    for role in actor.roles:
        if role in ("院领导", "管理员"):
            continue  # aggregates only: never an individual card
        scope = actor.classes_for_role(role)
        if scope is not None and class_id not in scope:
            continue
        domains |= CAREER_ONLY if role == "教研室" else FULL
        sensitive = sensitive or role in SENSITIVE_ROLES
    return View(frozenset(domains), sensitive) if domains else NO_VIEW


def class_view(actor: Actor, class_id: int) -> View:
    """How much of a class card `actor` may see (class points are never sensitive)."""
    if not actor.is_staff:
        return NO_VIEW
    domains: set[str] = set()
    for role in actor.roles:
        if role == "管理员":
            continue
        scope = actor.classes_for_role(role)
        if scope is None or class_id in scope:
            domains |= CAREER_ONLY if role == "教研室" else FULL
    return View(frozenset(domains), False) if domains else NO_VIEW


def viewable_classes(actor: Actor) -> set[int] | None:
    """Classes whose students' cards `actor` may look up (None: all)."""
    out: set[int] = set()
    for role in actor.roles - {"院领导", "管理员"}:
        scope = actor.classes_for_role(role)
        if scope is None:
            return None
        out |= scope
    return out


@dataclass(frozen=True)
class StaffFacts:
    """What the roster says of one staff member: the rows an `Actor`'s scopes are made from."""

    id: int
    staff_no: str
    name: str
    roles: frozenset[str]
    department_id: int | None
    head_classes: frozenset[int] = frozenset()
    counsel_classes: frozenset[int] = frozenset()
    taught_classes: frozenset[int] = frozenset()
    headed_departments: frozenset[int] = frozenset()


def staff_actor(userid: str, facts: StaffFacts, classes_of_department: Callable[[set[int]], set[int]]) -> Actor:
    """The staff sender with every scope; the class and department sheets grant the role they name."""
    roles = set(facts.roles)
    if facts.head_classes:
        roles.add("班主任")
    if facts.counsel_classes:
        roles.add("辅导员")
    if facts.headed_departments:
        roles.add("系部主任")
    departments = set(facts.headed_departments) | ({facts.department_id} if facts.department_id else set())
    return Actor(
        userid=userid, name=facts.name, staff_id=facts.id, roles=frozenset(roles),
        department_id=facts.department_id, head_classes=set(facts.head_classes),
        counsel_classes=set(facts.counsel_classes), taught_classes=set(facts.taught_classes),
        department_classes=classes_of_department(departments) if departments else set(),
    )


def student_actor(userid: str, name: str, student_id: int, class_id: int) -> Actor:
    """The student sender: their own card, nothing else."""
    return Actor(userid=userid, name=name, student_id=student_id, student_class_id=class_id)


def load_actor(session: Session, userid: str) -> Actor | None:
    """Find a person by 企业微信账号 (anyone's account first), else by 工号 or 学号; None if nobody.

    For the command line and for ids a message already resolved (an export link's requester);
    a chat message's sender is matched by `Directory.identify`, which is stricter."""
    staff = session.scalar(select(Staff).where(Staff.wecom_userid == userid))
    if staff is None and session.scalar(select(Student.id).where(Student.wecom_userid == userid)) is None:
        staff = session.scalar(select(Staff).where(Staff.staff_no == userid))
    if staff is not None:
        facts = StaffFacts(
            staff.id, staff.staff_no, staff.name, staff.role_set, staff.department_id,
            frozenset(session.scalars(select(SchoolClass.id).where(SchoolClass.head_teacher_id == staff.id))),
            frozenset(session.scalars(select(SchoolClass.id).where(SchoolClass.counsellor_id == staff.id))),
            frozenset(session.scalars(
                select(TeachingAssignment.class_id).where(TeachingAssignment.staff_id == staff.id))),
            frozenset(session.scalars(select(Department.id).where(Department.head_staff_no == staff.staff_no))),
        )
        return staff_actor(userid, facts, lambda departments: set(session.scalars(
            select(SchoolClass.id).where(SchoolClass.department_id.in_(departments)))))
    student = session.scalar(select(Student).where(Student.wecom_userid == userid)) or session.scalar(
        select(Student).where(Student.student_no == userid))
    if student is not None:
        return student_actor(userid, student.name, student.id, student.class_id)
    return None
