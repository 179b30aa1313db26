"""Tables: the roster, the calendar, score entries, the audit log, processed messages."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    DDL,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.db import Base


def utcnow() -> datetime:
    """Timezone-aware now, in UTC (stored as such)."""
    return datetime.now(UTC)


class Department(Base):
    """系部."""

    __tablename__ = "department"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    head_staff_no: Mapped[str | None] = mapped_column(String(32))


class Staff(Base):
    """教职工: one person with one or more roles."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_no: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    wecom_userid: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Roles joined by "," in canonical Chinese names (班主任,任课教师 …).
    roles: Mapped[str] = mapped_column(String(200), default="")
    department_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"))

    department: Mapped[Department | None] = relationship()

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(r for r in self.roles.split(",") if r)


class SchoolClass(Base):
    """班级."""

    __tablename__ = "school_class"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("department.id"))
    grade: Mapped[int | None] = mapped_column(Integer)
    head_teacher_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    counsellor_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))

    department: Mapped[Department] = relationship()
    head_teacher: Mapped[Staff | None] = relationship(foreign_keys=[head_teacher_id])
    counsellor: Mapped[Staff | None] = relationship(foreign_keys=[counsellor_id])


class Student(Base):
    """学生."""

    __tablename__ = "student"

    id: Mapped[int] = mapped_column(primary_key=True)
    student_no: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("school_class.id"), index=True)
    wecom_userid: Mapped[str | None] = mapped_column(String(64), unique=True)
    weekly_card: Mapped[bool] = mapped_column(Boolean, default=True)

    school_class: Mapped[SchoolClass] = relationship()


class TeachingAssignment(Base):
    """任课: a staff member teaches a course to a class."""

    __tablename__ = "teaching_assignment"
    __table_args__ = (UniqueConstraint("staff_id", "class_id", "course"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), index=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("school_class.id"), index=True)
    course: Mapped[str] = mapped_column(String(64))


class Semester(Base):
    """校历: one semester of an academic year (学年 "2025-2026", 学期 1 or 2)."""

    __tablename__ = "semester"
    __table_args__ = (UniqueConstraint("year", "term"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    year: Mapped[str] = mapped_column(String(16))
    term: Mapped[int] = mapped_column(Integer)
    start: Mapped[date] = mapped_column(Date)
    end: Mapped[date] = mapped_column(Date)


class ScoreEntry(Base):
    """One recorded value of a 采分点 for a student or a class.

    Entries are never deleted: undo sets `revoked_at`. The value of a point in a
    period is derived from its live entries (latest, sum or mean by point kind).
    """

    __tablename__ = "score_entry"
    __table_args__ = (
        Index("ix_score_student_point", "student_id", "point_code", "period_key"),
        Index("ix_score_class_point", "class_id", "point_code", "period_key"),
        Index("ix_score_batch", "batch_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    point_code: Mapped[str] = mapped_column(String(32))
    student_id: Mapped[int | None] = mapped_column(ForeignKey("student.id"))
    class_id: Mapped[int | None] = mapped_column(ForeignKey("school_class.id"))
    period_key: Mapped[str] = mapped_column(String(16))
    semester_key: Mapped[str] = mapped_column(String(16), index=True)
    occurred_on: Mapped[date] = mapped_column(Date)
    value: Mapped[float] = mapped_column(Float)
    recorder_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    batch_id: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16), default="chat")
    source_msg: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))


class RecordingBatch(Base):
    """One recording message (or import): the unit that `撤销` takes back."""

    __tablename__ = "recording_batch"

    id: Mapped[int] = mapped_column(primary_key=True)
    recorder_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"), index=True)
    source: Mapped[str] = mapped_column(String(16), default="chat")
    source_msg: Mapped[str | None] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditLog(Base):
    """Append-only: every change, who made it, through which message, the value before."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    entity: Mapped[str] = mapped_column(String(32))
    entity_key: Mapped[str] = mapped_column(String(128))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    source_msg: Mapped[str | None] = mapped_column(String(128))


class ProcessedMessage(Base):
    """An inbound message already handled, with the reply it got (WeChat retries get it again)."""

    __tablename__ = "processed_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    msg_key: Mapped[str] = mapped_column(String(160), unique=True)
    sender: Mapped[str] = mapped_column(String(64))
    reply: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RiskEvaluationQueue(Base):
    """A recording whose new values could trip an early-warning rule, waiting to be evaluated.

    Written in the recording's own transaction and taken off by the evaluation that follows it
    (models/evaluation.py), so the callback does none of the risk queries and no recording that
    should be evaluated is forgotten, even if the process stops in between.
    """

    __tablename__ = "risk_evaluation_queue"

    batch_id: Mapped[int] = mapped_column(ForeignKey("recording_batch.id"), primary_key=True, autoincrement=False)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(Base):
    """An outbound message: a row first, delivered later, never twice for the same key."""

    __tablename__ = "outbox_message"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(16), default="wecom")
    purpose: Mapped[str] = mapped_column(String(48))
    period_key: Mapped[str] = mapped_column(String(48))
    # recipient + purpose + period: a job that runs twice sends once.
    idem_key: Mapped[str] = mapped_column(String(200), unique=True)
    msgtype: Mapped[str] = mapped_column(String(16), default="text")
    title: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sending|inflight|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # None: due now
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The WeCom call that carried it (several rows share one bundled or batched call).
    delivery_ref: Mapped[str | None] = mapped_column(String(64))


class BindCode(Base):
    """A one-time code that binds an Official Account follower to a student, as that student or as a
    parent (PRODUCT.md §4.1). Only its hash is stored; it is used once, expires, and a newer code of
    the same student and kind voids it."""

    __tablename__ = "bind_code"
    __table_args__ = (Index("ix_bind_code_open", "student_id", "kind", "used_at", "voided_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("student.id"))
    kind: Mapped[str] = mapped_column(String(8))  # student | parent
    code_hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256(SECRET_KEY, student id + code), hex
    issued_by: Mapped[str] = mapped_column(String(64))  # Actor.audit_name of the 班主任/辅导员, or the CLI
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by: Mapped[str | None] = mapped_column(String(64))  # the openid it bound
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FollowerBinding(Base):
    """An Official Account follower (openid) bound to one student, as the student or as a parent.
    One binding per openid; one student-kind binding per student (the partial unique index below);
    at most four parents per student (checked under the student's row lock)."""

    __tablename__ = "follower_binding"

    id: Mapped[int] = mapped_column(primary_key=True)
    openid: Mapped[str] = mapped_column(String(64), unique=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("student.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # student | parent
    weekly_card: Mapped[bool] = mapped_column(Boolean, default=True)  # a parent's 退订周报 / 订阅周报
    bound_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    code_id: Mapped[int | None] = mapped_column(ForeignKey("bind_code.id"))


class BindFailure(Base):
    """A wrong 绑定 try from one openid: five within an hour lock that openid out for an hour."""

    __tablename__ = "bind_failure"
    __table_args__ = (Index("ix_bind_failure_openid_at", "openid", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    openid: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MpFollower(Base):
    """What the Official Account told us of a follower: when they last wrote (customer-service
    messages are accepted only within 48 hours of it) and whether they still follow."""

    __tablename__ = "mp_follower"

    openid: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    following: Mapped[bool] = mapped_column(Boolean, default=True)


class JobRun(Base):
    """One run of a scheduled job (by the scheduler or `jobs run`), for `jobs list`."""

    __tablename__ = "job_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(48), index=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|ok|error
    result: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(128))


class Lease(Base):
    """A named lease held by one process (the scheduler's): renewed while alive, taken over when it lapses."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(String(48), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Raised by every takeover: a job commits only while its process's generation is the lease's.
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class OutboxCall(Base):
    """One WeCom call as it was made: a call whose outcome is unknown (the process died during it)
    is made again with exactly this payload, under WeCom's duplicate check, so the person sees it once."""

    __tablename__ = "outbox_call"

    ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OverviewRequest(Base):
    """A `本周概况` that could not be computed inside the callback (no recent digest state: it would
    take longer than WeChat waits): answered at once that it is coming, pushed when built."""

    __tablename__ = "overview_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class PlanTask(Base):
    """A task of the 任务分解表 (plan cycle), with owner (负责人) and supervisor (督办人)."""

    __tablename__ = "plan_task"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)  # 编号
    title: Mapped[str] = mapped_column(Text)
    level: Mapped[str | None] = mapped_column(String(32))  # 层面
    owner_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), index=True)
    supervisor_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"), index=True)
    start: Mapped[date | None] = mapped_column(Date)
    due: Mapped[date] = mapped_column(Date)
    cycle: Mapped[int] = mapped_column(Integer)  # the plan year (事前 March … 事后 January)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    achievement: Mapped[int | None] = mapped_column(Integer)  # 达成度 reported in 事后
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|done|carried (into the 整改清单)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)
    carried_from_id: Mapped[int | None] = mapped_column(ForeignKey("plan_task.id"))  # 整改清单

    owner: Mapped[Staff] = relationship(foreign_keys=[owner_id])
    supervisor: Mapped[Staff | None] = relationship(foreign_keys=[supervisor_id])


class PlanTaskUpdate(Base):
    """Progress reported on a task (进度 / 完成 / 达成度), kept as history."""

    __tablename__ = "plan_task_update"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("plan_task.id"), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # progress|done|achievement|reminded|supervised
    value: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RiskWarning(Base):
    """An early warning about one student in one category (学业, 违纪, 心理健康 …); #N is its id.

    At most one is open per (student, category): `open_key` holds "student/category" while
    open and NULL once closed, under a unique constraint (NULLs never collide, on SQLite and
    PostgreSQL alike), so new evidence updates the open warning instead of opening a twin.
    """

    __tablename__ = "risk_warning"
    __table_args__ = (Index("ix_risk_warning_student", "student_id", "category"),
                      Index("ix_risk_warning_status", "status", "opened_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("student.id"))
    category: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(8))  # 关注 | 预警 | 严重
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | handled | false_alarm
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    summary: Mapped[str] = mapped_column(Text, default="")  # the current evidence, one line per rule
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    escalated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    close_note: Mapped[str | None] = mapped_column(Text)

    student: Mapped[Student] = relationship()


class RiskWarningEvent(Base):
    """Append-only history of a warning: opened, raised, evidence, flagged, escalated, handled, false_alarm."""

    __tablename__ = "risk_warning_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    warning_id: Mapped[int] = mapped_column(ForeignKey("risk_warning.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))  # None: the rules
    actor: Mapped[str] = mapped_column(String(64), default="system")
    level: Mapped[str | None] = mapped_column(String(8))
    rule_id: Mapped[str | None] = mapped_column(String(48), index=True)
    signature: Mapped[str | None] = mapped_column(String(300))  # the evidence, to tell new from known
    evidence: Mapped[str | None] = mapped_column(Text)  # JSON: [{point, text, on}, …]
    note: Mapped[str | None] = mapped_column(Text)


class RiskWarningRecipient(Base):
    """Who a warning is routed (or escalated) to, and by which relation to the student."""

    __tablename__ = "risk_warning_recipient"
    __table_args__ = (UniqueConstraint("warning_id", "staff_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    warning_id: Mapped[int] = mapped_column(ForeignKey("risk_warning.id"), index=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), index=True)
    relation: Mapped[str] = mapped_column(String(16))  # 班主任 | 辅导员 | 任课教师 | 学工办 | 系部主任
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RiskNotice(Base):
    """A person told about one event of a warning, alone or in a weekly bundle: never told twice."""

    __tablename__ = "risk_notice"
    __table_args__ = (UniqueConstraint("warning_id", "staff_id", "event_key"),
                      Index("ix_risk_notice_week", "staff_id", "week"))

    id: Mapped[int] = mapped_column(primary_key=True)
    warning_id: Mapped[int] = mapped_column(ForeignKey("risk_warning.id"))
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    event_key: Mapped[str] = mapped_column(String(48))  # opened | raised:严重 | escalated | flag:E | handled
    week: Mapped[str] = mapped_column(String(10))  # ISO week, for the weekly cap
    bundled: Mapped[bool] = mapped_column(Boolean, default=False)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_message.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DigestState(Base):
    """The weekly digest's state: every student's point accumulators and card scores as of a finished week.

    Derived from score_entry only (models/digest/state.py says exactly which entries it holds), so it
    can always be rebuilt; written whole, once per (semester, Sunday): the unique constraint makes a
    rerun or a concurrent run keep the first one. `data` is one compact binary record because it is
    only ever read and written whole (132,000 pairs at 15,000 students: one row, not 132,000).
    """

    __tablename__ = "digest_state"
    __table_args__ = (UniqueConstraint("semester_key", "cutoff"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    semester_key: Mapped[str] = mapped_column(String(16))
    cutoff: Mapped[date] = mapped_column(Date)  # the Sunday it is as of
    max_entry_id: Mapped[int] = mapped_column(Integer)  # every entry up to it is in the state or pending
    pending: Mapped[str] = mapped_column(Text, default="")  # ids up to max_entry_id not in it, comma-separated
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # before anything was read
    catalogue: Mapped[str] = mapped_column(String(64))  # fingerprint of the points and formula it was made with
    pairs: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DigestMeans(Base):
    """A scope's means of the card's domain subtotals and total as of one Sunday (scope 'college' id 0,
    'department' or 'class' and its id), kept by the weekly digest job for the weeks' chart and the
    card page's class average (models/digest/weeks.py); once per (scope, semester, Sunday)."""

    __tablename__ = "digest_means"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "semester_key", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[int] = mapped_column(Integer)
    semester_key: Mapped[str] = mapped_column(String(16))
    day: Mapped[date] = mapped_column(Date)
    catalogue: Mapped[str] = mapped_column(String(64))  # fingerprint (models/digest/state.py)
    means: Mapped[str] = mapped_column(String(64))  # in DOMAINS order, comma-separated, "" for none
    total: Mapped[float | None] = mapped_column(Float)
    students: Mapped[int] = mapped_column(Integer)  # with a total


# PostgreSQL keeps `data` as written (its own compression of 5 MB costs more than writing them).
event.listen(DigestState.__table__, "after_create",
             DDL("ALTER TABLE digest_state ALTER COLUMN data SET STORAGE EXTERNAL").execute_if(dialect="postgresql"))


# Revoked entries, for the digest to find the few revoked since its state was built; rows are inserted
# live (NULL), so recording never touches this index.
Index("ix_score_revoked", ScoreEntry.revoked_at, postgresql_where=ScoreEntry.revoked_at.is_not(None),
      sqlite_where=ScoreEntry.revoked_at.is_not(None))

# A student has at most one binding as the student themself (parents: several, counted in code).
Index("ux_follower_binding_self", FollowerBinding.student_id, unique=True,
      postgresql_where=FollowerBinding.kind == "student", sqlite_where=FollowerBinding.kind == "student")
