"""Who gets which digest: each 院领导 the college's, each 系部主任 their department's."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.schema import Department, Staff

PURPOSE = "weekly_digest"  # the outbox purpose of the Monday digest


@dataclass(frozen=True)
class Recipient:
    """Who gets which digest: the college (department None) or one department."""

    staff_id: int
    name: str
    userid: str | None
    department_id: int | None


def recipients(session: Session) -> list[Recipient]:
    """Each 院领导 (the college) and each 系部主任 (their department: the one they head, else their own)."""
    staff = session.execute(select(Staff.id, Staff.staff_no, Staff.name, Staff.wecom_userid, Staff.roles,
                                   Staff.department_id).order_by(Staff.id)).all()
    heads: dict[str, int] = {}
    for dept_id, staff_no in session.execute(select(Department.id, Department.head_staff_no)
                                             .where(Department.head_staff_no.is_not(None)).order_by(Department.id)):
        heads.setdefault(staff_no, dept_id)
    out = []
    for s in staff:
        roles = set((s.roles or "").split(","))
        if "院领导" in roles:
            out.append(Recipient(s.id, s.name, s.wecom_userid, None))
        elif s.staff_no in heads:
            out.append(Recipient(s.id, s.name, s.wecom_userid, heads[s.staff_no]))
        elif "系部主任" in roles and s.department_id is not None:
            out.append(Recipient(s.id, s.name, s.wecom_userid, s.department_id))
    return out


def scope_of(session: Session, staff_id: int) -> Recipient | None:
    """The digest a staff member gets (None: neither 院领导 nor 系部主任)."""
    return next((r for r in recipients(session) if r.staff_id == staff_id), None)
