"""Official Account followers bound to students with one-time codes (PRODUCT.md §4.1).

A code is 8 random digits, stored only as HMAC-SHA256(SECRET_KEY, "student id:kind:code"); it is
valid `bind_code_days`, used once (an UPDATE that only a still-open code survives decides), and a
newer code of the same student and kind voids it. `bind` returns what happened as a value; a
wrong 学号, a wrong code, a used or an expired one are one outcome, so a reply never tells whether
the 学号 exists. Five wrong tries from one openid within an hour lock it out for an hour from the
fifth. Every issue, bind and unbind is audited. Nothing here renders text: the one message the
domain sends (to the follower a new student binding replaced) is worded by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from models.authz import Actor, student_actor
from models.outbox import enqueue
from models.risk.clock import as_utc
from models.schema import AuditLog, BindCode, BindFailure, FollowerBinding, SchoolClass, Student

KINDS = ("student", "parent")
CODE_DIGITS = 8
MAX_PARENTS = 4
LOCK_TRIES = 5  # wrong tries …
LOCK_WINDOW = timedelta(hours=1)  # … within this lock the openid out …
LOCK_FOR = timedelta(hours=1)  # … for this long from the last of them
PARENT_LABEL = "家长"  # a parent follower's name: the child's name + this
FOLLOWER_LABEL = "关注者"  # an unbound follower's name in audit rows
REPLACED_PURPOSE = "binding_replaced"


def code_hash(secret_key: str, student_id: int, kind: str, code: str) -> str:
    """What is stored of a code: HMAC-SHA256(secret_key, "student id:kind:code"), hex."""
    message = f"{student_id}:{kind}:{code}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def new_code() -> str:
    """8 random digits from `secrets` (nothing of the student goes into it)."""
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def well_formed(code: str) -> bool:
    """Is `code` shaped like a binding code (8 ASCII digits)?"""
    return len(code) == CODE_DIGITS and code.isascii() and code.isdigit()


def _audit(session: Session, actor: str, action: str, entity: str, key: str, old: dict | None, new: dict | None,
           source_msg: str | None) -> None:
    session.add(AuditLog(actor=actor, action=action, entity=entity, entity_key=key,
                         old_value=json.dumps(old, ensure_ascii=False) if old is not None else None,
                         new_value=json.dumps(new, ensure_ascii=False) if new is not None else None,
                         source_msg=source_msg))


# ───────────────────────────── issuing codes ─────────────────────────────

@dataclass(frozen=True)
class IssuedCode:
    """A code just issued: the only moment its digits exist outside the follower's hands."""

    student_id: int
    student_no: str
    name: str
    kind: str
    code: str
    expires_at: datetime  # UTC


def issue_codes(session: Session, student_ids: Sequence[int], kind: str, *, secret_key: str, days: int,
                now: datetime, issued_by: str, source_msg: str | None = None) -> list[IssuedCode]:
    """A fresh code of `kind` for each student (in 学号 order), voiding their older open codes of that
    kind; audited without the code. The caller commits."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if not student_ids:
        return []
    now = as_utc(now)
    expires = now + timedelta(days=days)
    # The students' rows locked (in id order): two issues for one student queue, so the later voids the earlier.
    students = session.scalars(select(Student).where(Student.id.in_(sorted(set(student_ids))))
                               .order_by(Student.id).with_for_update()).all()
    open_codes: dict[int, list[int]] = {}
    for code_id, student_id in session.execute(
            select(BindCode.id, BindCode.student_id).where(
                BindCode.student_id.in_([s.id for s in students]), BindCode.kind == kind,
                BindCode.used_at.is_(None), BindCode.voided_at.is_(None))):
        open_codes.setdefault(student_id, []).append(code_id)
    voided = [i for ids in open_codes.values() for i in ids]
    if voided:
        session.execute(update(BindCode).where(BindCode.id.in_(voided)).values(voided_at=now))
    issued: list[IssuedCode] = []
    for student in sorted(students, key=lambda s: s.student_no):
        code = new_code()
        row = BindCode(student_id=student.id, kind=kind, code_hash=code_hash(secret_key, student.id, kind, code),
                       issued_by=issued_by[:64], created_at=now, expires_at=expires)
        session.add(row)
        session.flush()
        _audit(session, issued_by[:64], "issue_bind_code", "bind_code", f"student:{student.id}",
               {"voided": open_codes[student.id]} if student.id in open_codes else None,
               {"code_id": row.id, "kind": kind, "expires_at": expires.isoformat()}, source_msg)
        issued.append(IssuedCode(student.id, student.student_no, student.name, kind, code, expires))
    return issued


# ───────────────────────────── lockout ─────────────────────────────

def _lock_from(tries: Sequence[datetime]) -> datetime | None:
    """The end of the latest lockout these wrong tries (ascending) cause, if any."""
    until = None
    for i in range(LOCK_TRIES - 1, len(tries)):
        if tries[i] - tries[i - LOCK_TRIES + 1] <= LOCK_WINDOW:
            until = tries[i] + LOCK_FOR
    return until


def locked_until(session: Session, openid: str, now: datetime) -> datetime | None:
    """When `openid` may try to bind again (UTC), or None when it may now."""
    now = as_utc(now)
    since = now - LOCK_WINDOW - LOCK_FOR
    tries = [as_utc(t) for t in session.scalars(
        select(BindFailure.at).where(BindFailure.openid == openid, BindFailure.at > since).order_by(BindFailure.at))]
    until = _lock_from(tries)
    return until if until is not None and now < until else None


# ───────────────────────────── binding ─────────────────────────────

@dataclass(frozen=True)
class ReplacedOwner:
    """The follower a new student binding displaced: they are told so."""

    openid: str
    student_name: str
    student_no: str
    at: datetime  # UTC


@dataclass(frozen=True)
class BindResult:
    """What one 绑定 did.

    outcome: "bound"; "refused" (a wrong 学号 or code, used, expired: one outcome); "locked" (too
    many wrong tries: `until`); "parents_full" (the student has `MAX_PARENTS` parents already; the
    code stays unused). A refusal that was the fifth wrong try says `until` too.
    """

    outcome: str
    kind: str | None = None
    student_no: str | None = None
    student_name: str | None = None
    class_name: str | None = None
    until: datetime | None = None  # UTC
    replaced: ReplacedOwner | None = None  # the student's previous openid, now unbound

    @property
    def bound(self) -> bool:
        return self.outcome == "bound"


def _refuse(session: Session, openid: str, now: datetime) -> BindResult:
    session.add(BindFailure(openid=openid, at=now))
    session.flush()
    return BindResult("refused", until=locked_until(session, openid, now))


def _matching_code(session: Session, secret_key: str, student: Student, code: str, now: datetime) -> BindCode | None:
    """The student's open, unexpired code whose hash is that of `code` (either kind)."""
    found = None
    for row in session.scalars(select(BindCode).where(
            BindCode.student_id == student.id, BindCode.used_at.is_(None), BindCode.voided_at.is_(None))):
        if as_utc(row.expires_at) <= now:
            continue
        if hmac.compare_digest(row.code_hash, code_hash(secret_key, student.id, row.kind, code)):
            found = row
    return found


def bind(session: Session, openid: str, student_no: str, code: str, *, secret_key: str, now: datetime,
         tell_replaced: Callable[[ReplacedOwner], str], source_msg: str | None = None) -> BindResult:
    """Bind `openid` to the student `student_no` with `code`, as the code's kind; the caller commits.

    `tell_replaced` words the message to the follower a new student binding displaces (queued on
    the "mp" channel in this transaction)."""
    now = as_utc(now)
    until = locked_until(session, openid, now)
    if until is not None:
        return BindResult("locked", until=until)
    # The student's row locked: concurrent binds to one student (one code, a fifth parent) take turns.
    student = session.scalar(select(Student).where(Student.student_no == student_no).with_for_update())
    if student is None or not well_formed(code):
        code_hash(secret_key, 0, "student", code)  # the same work either way
        return _refuse(session, openid, now)
    row = _matching_code(session, secret_key, student, code, now)
    if row is None:
        return _refuse(session, openid, now)
    current = session.scalar(select(FollowerBinding).where(FollowerBinding.openid == openid))
    klass = session.get(SchoolClass, student.class_id)
    result = dict(kind=row.kind, student_no=student.student_no, student_name=student.name,
                  class_name=klass.name if klass else None)
    if row.kind == "parent":
        parents = session.scalar(select(func.count()).select_from(FollowerBinding).where(
            FollowerBinding.student_id == student.id, FollowerBinding.kind == "parent",
            FollowerBinding.openid != openid))
        if parents >= MAX_PARENTS:
            return BindResult("parents_full", **result)
    used = session.execute(update(BindCode).where(
        BindCode.id == row.id, BindCode.used_at.is_(None), BindCode.voided_at.is_(None),
    ).values(used_at=now, used_by=openid))
    if used.rowcount != 1:  # a concurrent 绑定 used it first
        return _refuse(session, openid, now)
    actor = f"{student.name}{PARENT_LABEL if row.kind == 'parent' else ''}({openid})"[:64]
    if current is not None:
        _remove(session, current, actor, "rebind", source_msg, {"rebound_to": student.id, "kind": row.kind})
    replaced = None
    if row.kind == "student":
        previous = session.scalar(select(FollowerBinding).where(
            FollowerBinding.student_id == student.id, FollowerBinding.kind == "student"))
        if previous is not None and previous.openid != openid:
            replaced = ReplacedOwner(previous.openid, student.name, student.student_no, now)
            _remove(session, previous, actor, "replace_binding", source_msg, {"replaced_by": openid})
            enqueue(session, previous.openid, REPLACED_PURPOSE, str(previous.id), tell_replaced(replaced),
                    channel="mp")
    session.flush()  # the old rows gone before the new one meets the unique indexes
    binding = FollowerBinding(openid=openid, student_id=student.id, kind=row.kind, weekly_card=True,
                              bound_at=now, code_id=row.id)
    session.add(binding)
    session.flush()
    _audit(session, actor, "bind", "follower_binding", f"student:{student.id}", None,
           {"openid": openid, "kind": row.kind, "code_id": row.id}, source_msg)
    session.execute(delete(BindFailure).where(BindFailure.openid == openid))
    return BindResult("bound", replaced=replaced, **result)


def _remove(session: Session, binding: FollowerBinding, actor: str, action: str, source_msg: str | None,
            new: dict | None) -> None:
    _audit(session, actor, action, "follower_binding", f"student:{binding.student_id}",
           {"openid": binding.openid, "kind": binding.kind, "weekly_card": binding.weekly_card}, new, source_msg)
    session.delete(binding)


@dataclass(frozen=True)
class Unbound:
    """The binding 解绑 removed."""

    kind: str
    student_name: str


def unbind(session: Session, openid: str, *, actor: str, source_msg: str | None = None) -> Unbound | None:
    """Remove `openid`'s binding (audited); None when it had none. The caller commits."""
    binding = session.scalar(select(FollowerBinding).where(FollowerBinding.openid == openid))
    if binding is None:
        return None
    student = session.get(Student, binding.student_id)
    _remove(session, binding, actor[:64], "unbind", source_msg, None)
    session.flush()
    return Unbound(binding.kind, student.name if student else "")


def set_weekly_card(session: Session, openid: str, wanted: bool, *, actor: str,
                    source_msg: str | None = None) -> bool | None:
    """A parent's 退订周报 / 订阅周报 on their binding (audited); True when it already had that value,
    None when `openid` has no binding."""
    binding = session.scalar(select(FollowerBinding).where(FollowerBinding.openid == openid))
    if binding is None:
        return None
    if binding.weekly_card == wanted:
        return True
    _audit(session, actor[:64], "subscribe" if wanted else "unsubscribe", "follower_binding",
           f"student:{binding.student_id}", {"openid": openid, "weekly_card": binding.weekly_card},
           {"openid": openid, "weekly_card": wanted}, source_msg)
    binding.weekly_card = wanted
    return False


# ───────────────────────────── who a follower is ─────────────────────────────

def follower_identity(session: Session, openid: str) -> Actor:
    """The Actor of an Official Account follower, by their binding: the student themself (as on
    WeCom), a parent (the child's card without sensitive points), or an unbound follower."""
    found = session.execute(
        select(FollowerBinding.kind, Student.id, Student.name, Student.class_id)
        .join(Student, Student.id == FollowerBinding.student_id)
        .where(FollowerBinding.openid == openid)).first()
    if found is None:
        return Actor(userid=openid, name=FOLLOWER_LABEL, follower=True)
    kind, student_id, name, class_id = found
    if kind == "student":
        actor = student_actor(openid, name, student_id, class_id)
        actor.follower = True
        return actor
    return Actor(userid=openid, name=f"{name}{PARENT_LABEL}", follower=True, parent_of=student_id)
