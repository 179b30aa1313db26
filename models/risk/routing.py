"""Routing: who stands in which relation to a student, who may see a warning, and queueing the
notices — alone under each person's weekly cap, beyond it in one bundle per person — in the
outbox, in the transaction of the warnings (a `RiskNotice` per warning, person and event makes
every rerun send nothing new).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, tzinfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.cards import chunks
from models.outbox import Draft, enqueue_many, insert_rows, queued_ids
from models.periods import week_key
from models.risk.aggregates import CHUNK
from models.risk.notices import (
    NoticeCount,
    Notify,
    WarningBundle,
    WarningNotice,
    need,
    warning_views,
)
from models.risk.rules import RELATIONS, SENSITIVE_RELATIONS, RuleBook
from models.schema import (
    Department,
    OutboxMessage,
    RiskNotice,
    RiskWarning,
    RiskWarningRecipient,
    SchoolClass,
    Staff,
    Student,
    TeachingAssignment,
)

PURPOSE, BUNDLE_PURPOSE = "warning", "warning_bundle"


@dataclass
class Advisers:
    """Who advises the students concerned (班主任, 辅导员, 任课教师, 学工办, 系部主任), loaded with a
    few queries in the warning's own transaction. Not models/directory.Directory (the roster cache
    that tells who a sender is): routing reads the current rows, teaching assignments and offices."""

    class_of: dict[int, int] = field(default_factory=dict)
    head: dict[int, int | None] = field(default_factory=dict)
    counsellor: dict[int, int | None] = field(default_factory=dict)
    department: dict[int, int] = field(default_factory=dict)
    teachers: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    office: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    dept_head: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, student_ids: Iterable[int]) -> Advisers:
        """The advisers of these students."""
        d = cls()
        ids = sorted(set(student_ids))
        for chunk in chunks(ids, CHUNK):
            d.class_of.update(session.execute(select(Student.id, Student.class_id).where(Student.id.in_(chunk))).all())
        class_ids = sorted(set(d.class_of.values()))
        if not class_ids:
            return d
        for cid, head, counsellor, dept in session.execute(select(
                SchoolClass.id, SchoolClass.head_teacher_id, SchoolClass.counsellor_id, SchoolClass.department_id)
                .where(SchoolClass.id.in_(class_ids))):
            d.head[cid], d.counsellor[cid], d.department[cid] = head, counsellor, dept
        for staff_id, cid in session.execute(select(TeachingAssignment.staff_id, TeachingAssignment.class_id)
                                             .where(TeachingAssignment.class_id.in_(class_ids))):
            d.teachers[cid].add(staff_id)
        depts = sorted(set(d.department.values()))
        for staff_id, dept in session.execute(select(Staff.id, Staff.department_id).where(
                Staff.department_id.in_(depts), Staff.roles.contains("学工办"))):
            d.office[dept].add(staff_id)
        for dept, staff_id in session.execute(select(Department.id, Staff.id).join(
                Staff, Staff.staff_no == Department.head_staff_no).where(Department.id.in_(depts))):
            d.dept_head[dept] = staff_id
        return d

    def people(self, student_id: int, relations: Iterable[str], sensitive: bool,
               recorders: frozenset[int] = frozenset()) -> dict[int, str]:
        """staff id → relation, for the relations asked (sensitive: only 班主任, 辅导员, 学工办).

        任课教师 are those of the class who recorded the evidence, when it names them; all of the
        class's teachers otherwise (a trend, say).
        """
        cid = self.class_of.get(student_id)
        if cid is None:
            return {}
        wanted = [r for r in RELATIONS if r in set(relations) and (not sensitive or r in SENSITIVE_RELATIONS)]
        out: dict[int, str] = {}
        for relation in wanted:
            dept = self.department.get(cid)
            found: set[int] = {
                "班主任": {self.head.get(cid)},
                "辅导员": {self.counsellor.get(cid)},
                "任课教师": (self.teachers.get(cid, set()) & recorders) or self.teachers.get(cid, set()),
                "学工办": self.office.get(dept, set()) if dept is not None else set(),
                "系部主任": {self.dept_head.get(dept)} if dept is not None else set(),
            }[relation]
            for staff_id in sorted(s for s in found if s is not None):
                out.setdefault(staff_id, relation)
        return out




def may_see(warning: RiskWarning, relation: str) -> bool:
    """A recipient sees a sensitive warning only through a relation that may see sensitive data."""
    return not warning.sensitive or relation in SENSITIVE_RELATIONS


@dataclass(frozen=True)
class Recipient:
    """A warning's routing row as evaluation needs it (id 0: written by this run)."""

    id: int
    relation: str
    escalated: bool = False


@dataclass
class Routing:
    """Recipients and notices of the warnings being updated, loaded together."""

    recipients: dict[int, dict[int, Recipient]] = field(default_factory=lambda: defaultdict(dict))
    told: dict[int, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))

    def load(self, session: Session, warning_ids: Sequence[int]) -> Routing:
        for chunk in chunks(sorted(set(warning_ids)), CHUNK):
            for rid, wid, staff_id, relation, escalated in session.execute(select(
                    RiskWarningRecipient.id, RiskWarningRecipient.warning_id, RiskWarningRecipient.staff_id,
                    RiskWarningRecipient.relation, RiskWarningRecipient.escalated)
                    .where(RiskWarningRecipient.warning_id.in_(chunk))):
                self.recipients[wid][staff_id] = Recipient(rid, relation, escalated)
            for wid, staff_id, key in session.execute(select(
                    RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key)
                    .where(RiskNotice.warning_id.in_(chunk))):
                self.told[wid].add((staff_id, key))
        return self



def routed_names(session: Session, warning: RiskWarning) -> list[str]:
    """名字（关系） of everyone a warning is routed to who may see it."""
    rows = session.execute(select(Staff.name, RiskWarningRecipient.relation).join(
        Staff, Staff.id == RiskWarningRecipient.staff_id).where(RiskWarningRecipient.warning_id == warning.id)
        .order_by(RiskWarningRecipient.id)).all()
    return [f"{name}（{relation}）" for name, relation in rows if may_see(warning, relation)]


def recipient(session: Session, warning: RiskWarning, staff_id: int) -> RiskWarningRecipient | None:
    """The person's routing row if the warning is theirs to act on (privacy included)."""
    row = session.scalar(select(RiskWarningRecipient).where(
        RiskWarningRecipient.warning_id == warning.id, RiskWarningRecipient.staff_id == staff_id))
    return row if row is not None and may_see(warning, row.relation) else None



class Notifier:
    """Collects who must hear of which warning event, then queues it all at once: alone under the
    weekly cap, beyond it in one bundle per person (appended to while it is still pending)."""

    def __init__(self, session: Session, book: RuleBook, today: date, notify: Notify | None, tz: tzinfo) -> None:
        """`notify` turns the notices into words; None fails loudly at the first notice to send."""
        self.session = session
        self.book = book
        self.today = today
        self.notify = notify
        self.tz = tz
        self.week = week_key(today)
        self.pending: list[tuple[RiskWarning, int, str, bool, dict]] = []
        self.silent: list[tuple[RiskWarning, int, str]] = []
        self.count = NoticeCount()

    def add(self, warning: RiskWarning, staff_id: int, event_key: str, *, capped: bool = True,
            **context: object) -> None:
        """Tell a person of a warning event (`context`: the fields of a `WarningNotice`)."""
        self.pending.append((warning, staff_id, event_key, capped, context))

    def mark_told(self, warning: RiskWarning, staff_id: int, event_key: str) -> None:
        """The person knows already (they raised the flag): a notice without a message."""
        self.silent.append((warning, staff_id, event_key))

    def flush(self) -> NoticeCount:
        """Queue everything collected, a table at a time; a person already told of an event is not told again."""
        if not self.pending and not self.silent:
            return self.count
        session = self.session
        warning_ids = sorted({w.id for w, *_ in self.pending} | {w.id for w, *_ in self.silent})
        told: set[tuple[int, int, str]] = set()
        for chunk in chunks(warning_ids, CHUNK):
            told |= set(session.execute(select(RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key)
                                        .where(RiskNotice.warning_id.in_(chunk))).all())
        notices: list[dict] = []
        for warning, staff_id, event_key in self.silent:
            if (warning.id, staff_id, event_key) not in told:
                told.add((warning.id, staff_id, event_key))
                notices.append(self._notice(warning.id, staff_id, event_key))
        staff_ids = sorted({s for _w, s, *_ in self.pending})
        accounts: dict[int, str | None] = {}
        sent_this_week: dict[int, int] = defaultdict(int)
        for chunk in chunks(staff_ids, CHUNK):
            accounts.update(dict(session.execute(
                select(Staff.id, Staff.wecom_userid).where(Staff.id.in_(chunk))).all()))
            sent_this_week.update(dict(session.execute(
                select(RiskNotice.staff_id, func.count()).where(
                    RiskNotice.staff_id.in_(chunk), RiskNotice.week == self.week, RiskNotice.bundled.is_(False),
                    RiskNotice.outbox_id.is_not(None), RiskNotice.event_key != "handled")
                .group_by(RiskNotice.staff_id)).all()))
        views = warning_views(session, self.book, list({w.id: w for w, *_ in self.pending}.values()), self.tz)
        bodies: dict[str, str] = {}  # a message does not depend on its recipient: rendered once
        singles: list[tuple[dict, Draft]] = []
        bundled: dict[int, list[dict]] = defaultdict(list)
        for warning, staff_id, event_key, capped, context in self.pending:
            if (warning.id, staff_id, event_key) in told:
                continue
            told.add((warning.id, staff_id, event_key))
            userid = accounts.get(staff_id)
            if not userid:
                self.count.no_account += 1
                continue
            notice = self._notice(warning.id, staff_id, event_key)
            notices.append(notice)
            capped = capped and warning.level not in self.book.policy.cap_exempt_levels
            if capped and sent_this_week[staff_id] >= self.book.policy.weekly_cap:
                notice["bundled"] = True
                bundled[staff_id].append(notice)
                self.count.bundled += 1
                continue
            key = f"{warning.id}/{event_key}"  # the outbox period key: one message per warning event
            shown = f"{key}|{sorted(context.items())!r}"
            if shown not in bodies:
                notice_value = WarningNotice(event_key, views[warning.id], **context)  # type: ignore[arg-type]
                bodies[shown] = need(self.notify).notice_text(notice_value)
            singles.append((notice, Draft(userid, PURPOSE, key, bodies[shown])))
            if capped:
                sent_this_week[staff_id] += 1
            self.count.single += 1
        drafts = [d for _n, d in singles]
        ids = enqueue_many(session, drafts)
        # Queued before (a notice lost with a rolled-back run, or a concurrent twin): the same row.
        ids |= queued_ids(session, [d.key for d in drafts if d.key not in ids])
        for notice, draft in singles:
            notice["outbox_id"] = ids.get(draft.key)
        targets = self._bundle_targets({s: accounts[s] or "" for s in bundled})
        for staff_id, rows in bundled.items():
            for notice in rows:
                notice["outbox_id"] = targets[staff_id]
        written = _write_notices(session, notices)
        if bundled:
            mine = {(w, s, k): i for i, w, s, k in written}
            self._fill_bundles({s: targets[s] for s in bundled}, accounts, {
                s: [mine[(n["warning_id"], s, n["event_key"])] for n in rows
                    if (n["warning_id"], s, n["event_key"]) in mine] for s, rows in bundled.items()})
        self.pending.clear()
        self.silent.clear()
        return self.count

    def _notice(self, warning_id: int, staff_id: int, event_key: str) -> dict:
        return dict(warning_id=warning_id, staff_id=staff_id, event_key=event_key, week=self.week, bundled=False,
                    outbox_id=None)

    def _bundle_targets(self, userids: dict[int, str]) -> dict[int, int]:
        """staff id → the bundle their capped notices join: this week's pending one, or a new one."""
        if not userids:
            return {}
        pending: dict[str, int] = {}
        made: dict[str, int] = defaultdict(int)
        for chunk in chunks(sorted(set(userids.values())), CHUNK):
            for oid, userid, status in self.session.execute(
                    select(OutboxMessage.id, OutboxMessage.recipient, OutboxMessage.status).where(
                        OutboxMessage.recipient.in_(chunk), OutboxMessage.purpose == BUNDLE_PURPOSE,
                        OutboxMessage.period_key.like(f"{self.week}%"))):
                made[userid] += 1
                if status == "pending":
                    pending[userid] = max(oid, pending.get(userid, 0))
        out = {s: pending[u] for s, u in userids.items() if u in pending}
        out |= self._new_bundles({s: u for s, u in userids.items() if u not in pending}, made)
        return out

    def _new_bundles(self, userids: dict[int, str], made: dict[str, int]) -> dict[int, int]:
        """A new bundle per person: this week's key, then #2, #3 … after the ones already made."""
        out: dict[int, int] = {}
        while userids:
            drafts = {s: Draft(u, BUNDLE_PURPOSE, self.week if not made[u] else f"{self.week}#{made[u] + 1}", "…")
                      for s, u in userids.items()}
            ids = enqueue_many(self.session, list(drafts.values()))
            out |= {s: ids[d.key] for s, d in drafts.items() if d.key in ids}
            # A concurrent writer took the key first: the one after it, then.
            userids = {s: u for s, u in userids.items() if s not in out}
            for u in userids.values():
                made[u] += 1
        return out

    def _fill_bundles(self, targets: dict[int, int], accounts: dict[int, str | None],
                      mine: dict[int, list[int]]) -> None:
        """Write each bundle's body; one a delivery claimed meanwhile keeps its body, and this run's
        notices move to a new bundle."""
        bodies = self._bundle_bodies(sorted(set(targets.values())))
        claimed = []
        for staff_id, oid in targets.items():
            # Only while still pending: a delivery that claimed it meanwhile keeps its body.
            if self.session.execute(update(OutboxMessage).where(
                    OutboxMessage.id == oid, OutboxMessage.status == "pending")
                    .values(body=bodies[oid])).rowcount != 1:
                claimed.append(staff_id)
        if not claimed:
            return
        made: dict[str, int] = defaultdict(int)
        for (userid,) in self.session.execute(select(OutboxMessage.recipient).where(
                OutboxMessage.recipient.in_([accounts[s] for s in claimed]), OutboxMessage.purpose == BUNDLE_PURPOSE,
                OutboxMessage.period_key.like(f"{self.week}%"))):
            made[userid] += 1
        fresh = self._new_bundles({s: accounts[s] or "" for s in claimed}, made)
        for staff_id, oid in fresh.items():
            self.session.execute(update(RiskNotice).where(RiskNotice.id.in_(mine[staff_id])).values(outbox_id=oid))
        bodies = self._bundle_bodies(sorted(fresh.values()))
        for oid in fresh.values():
            self.session.execute(update(OutboxMessage).where(OutboxMessage.id == oid).values(body=bodies[oid]))

    def _bundle_bodies(self, outbox_ids: Sequence[int]) -> dict[int, str]:
        """Each bundle as its person may read it now (a warning that became sensitive since is left out)."""
        session = self.session
        staff_of: dict[int, int] = {}
        listed: dict[int, list[int]] = defaultdict(list)
        for chunk in chunks(outbox_ids, CHUNK):
            for oid, staff_id, wid in session.execute(
                    select(RiskNotice.outbox_id, RiskNotice.staff_id, RiskNotice.warning_id)
                    .where(RiskNotice.outbox_id.in_(chunk)).order_by(RiskNotice.id)):
                staff_of[oid] = staff_id
                if wid not in listed[oid]:
                    listed[oid].append(wid)
        ids = sorted({w for ws in listed.values() for w in ws})
        relation: dict[tuple[int, int], str] = {}
        warnings: dict[int, RiskWarning] = {}
        for chunk in chunks(ids, CHUNK):
            for wid, staff_id, rel in session.execute(select(
                    RiskWarningRecipient.warning_id, RiskWarningRecipient.staff_id, RiskWarningRecipient.relation)
                    .where(RiskWarningRecipient.warning_id.in_(chunk))):
                relation[(wid, staff_id)] = rel
            warnings.update({w.id: w for w in session.scalars(select(RiskWarning).where(RiskWarning.id.in_(chunk)))})
        shown = {oid: [w for w in listed[oid] if may_see(warnings[w], relation.get((w, staff_of[oid]), ""))]
                 for oid in listed}
        visible = sorted({w for ws in shown.values() for w in ws})
        views = warning_views(session, self.book, [warnings[w] for w in visible], self.tz)
        notify = need(self.notify)
        return {oid: notify.bundle_text(WarningBundle([views[w] for w in ws], self.book.policy.weekly_cap))
                for oid, ws in shown.items()}


def _write_notices(session: Session, rows: list[dict]) -> list[tuple[int, int, int, str]]:
    """Insert notices (one told concurrently already is skipped); (id, warning, staff, event) of those written."""
    written = insert_rows(session, RiskNotice, rows, skip_conflicts=True, returning=(
        RiskNotice.id, RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key))
    return [tuple(r) for r in written]

