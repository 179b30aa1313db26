"""Who is who in the demo college, for the console's `/who`: every staff member with their roles
and scope, then about six students (the documented ones first)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.catalogue import ROLES
from models.io.demo import CLASSES, DUPLICATE_NAME
from models.schema import Department, SchoolClass, Staff, Student, TeachingAssignment


def _role_text(roles: set[str]) -> str:
    return "、".join(r for r in ROLES if r in roles)


def _classes_text(codes: list[str]) -> str:
    return "、".join(codes) if len(codes) <= 3 else f"{codes[0]}等{len(codes)}个班"


def demo_people(session: Session) -> list[tuple[str, str, str]]:
    """(userid, name, "角色 · scope") for `/who`: every staff member, then about six students."""
    classes = session.scalars(select(SchoolClass).order_by(SchoolClass.code)).all()
    code_of = {c.id: c.code for c in classes}
    demo_order = {code: i for i, (code, *_rest) in enumerate(CLASSES)}
    order = {c.code: i for i, c in enumerate(sorted(classes, key=lambda c: (demo_order.get(c.code, 99), c.code)))}
    dept_names = {d.id: d.name for d in session.scalars(select(Department))}
    heads = {d.head_staff_no: d.id for d in session.scalars(select(Department)) if d.head_staff_no}
    taught: dict[int, set[str]] = {}
    for staff_id, class_id in session.execute(
            select(TeachingAssignment.staff_id, TeachingAssignment.class_id)):
        taught.setdefault(staff_id, set()).add(code_of[class_id])
    out: list[tuple[str, str, str]] = []
    for s in session.scalars(select(Staff).order_by(Staff.staff_no)):
        roles = set(s.role_set)
        mine = {code_of[c.id] for c in classes if s.id in (c.head_teacher_id, c.counsellor_id)}
        if any(c.head_teacher_id == s.id for c in classes):
            roles.add("班主任")
        if any(c.counsellor_id == s.id for c in classes):
            roles.add("辅导员")
        if s.staff_no in heads:
            roles.add("系部主任")
        dept = dept_names.get(s.department_id or heads.get(s.staff_no, -1))
        if roles & {"院领导", "管理员"}:
            scope = "全院"
        elif roles & {"学工办", "教研室", "系部主任"} and dept:
            scope = dept
        else:
            codes = sorted(mine | taught.get(s.id, set()), key=lambda c: order.get(c, 99))
            scope = _classes_text(codes) if codes else (dept or "")
        out.append((s.wecom_userid or s.staff_no, s.name, f"{_role_text(roles) or '教职工'} · {scope}"))

    # Students: the documented ones first, then one per class, alternating departments.
    picked = list(session.scalars(
        select(Student).where(Student.wecom_userid.in_(("zhangsan", "lisi"))).order_by(Student.student_no)))
    dup_class = session.scalar(select(SchoolClass.id).where(SchoolClass.code == CLASSES[0][0]))
    picked += session.scalars(select(Student).where(
        Student.name == DUPLICATE_NAME, Student.class_id == dup_class).order_by(Student.student_no)).all()
    seen_classes = {p.class_id for p in picked}
    per_dept = Counter(c.department_id for c in classes if c.id in seen_classes)
    rest = [c for c in classes if c.id not in seen_classes]
    while len(picked) < 6 and rest:
        rest.sort(key=lambda c: (per_dept[c.department_id], order.get(c.code, 99)))
        klass = rest.pop(0)
        first = session.scalar(select(Student).where(Student.class_id == klass.id)
                               .order_by(Student.student_no).limit(1))
        if first is not None:
            picked.append(first)
            per_dept[klass.department_id] += 1
    out += [(p.wecom_userid or p.student_no, p.name, f"学生 · {code_of.get(p.class_id, '')}") for p in picked]
    return out

