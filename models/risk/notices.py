"""What the warnings tell people, as values: the warning as shown, a notice, a weekly bundle.

The domain decides who hears of what; `Notify` (scheduler/notify/warnings.py, handed in by
bot/service.make_service) turns these values into words through templates/push/warning_*.txt.
Nothing here renders text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, tzinfo
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.cards import chunks
from models.risk.aggregates import CHUNK
from models.risk.clock import local
from models.risk.matching import Evidence
from models.risk.rules import RuleBook
from models.schema import RiskWarning, RiskWarningEvent, SchoolClass, Student


@dataclass
class WarningView:
    """A warning as messages and replies show it."""

    id: int
    category: str
    level: str
    status: str
    sensitive: bool
    student: str
    student_no: str
    class_name: str
    evidence: list[str]
    actions: list[str]
    opened_on: date
    escalated: bool = False

    @property
    def headline(self) -> str:
        """The first line of evidence (the most serious rule's)."""
        return self.evidence[0] if self.evidence else ""


@dataclass
class WarningNotice:
    """One message about one warning event (its body does not depend on the person it goes to)."""

    event: str  # opened | raised:<level> | flag:<event id> | escalated | handled
    warning: WarningView
    handler: str = ""  # handled: who closed it, and what they wrote
    note: str = ""
    false_alarm: bool = False
    days: int = 0  # escalated: days left unhandled, and whom it had reached
    routed: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """Which message this is: opened, raised, flagged, escalated or handled."""
        kind = self.event.split(":", 1)[0]
        return "flagged" if kind == "flag" else kind


@dataclass
class WarningBundle:
    """The warnings a person hears of beyond their weekly cap, in one message."""

    items: list[WarningView]
    cap: int


class Notify(Protocol):
    """Turns the warnings' values into words (scheduler/notify/warnings.py is the one implementation)."""

    def notice_text(self, notice: WarningNotice) -> str:
        """The body of one message, within WeCom's byte limit."""
        ...

    def bundle_text(self, bundle: WarningBundle) -> str:
        """The body of a weekly bundle, listing as many warnings as fit."""
        ...

    def evidence_text(self, evidence: Evidence) -> str:
        """One line of evidence as a warning's summary and messages show it."""
        ...

    def escalation_note(self, days: int, sensitive: bool) -> str:
        """The note of an escalation event."""
        ...


class NoNotifier(RuntimeError):
    """A warning had something to say and no `Notify` was given to say it (build the service
    with bot/service.make_service): nothing is written rather than a notice lost."""


def need(notify: Notify | None) -> Notify:
    """The notifier, or a loud failure when there is none."""
    if notify is None:
        raise NoNotifier("a warning has a notice to send, but no notifier was given (use bot.service.make_service)")
    return notify


@dataclass
class NoticeCount:
    """What a run queued."""

    single: int = 0
    bundled: int = 0
    no_account: int = 0


def warning_views(session: Session, book: RuleBook, warnings: Sequence[RiskWarning],
                  tz: tzinfo) -> dict[int, WarningView]:
    """Views of several warnings (student, class, current evidence, suggested actions), in three queries."""
    if not warnings:
        return {}
    students: dict[int, tuple[str, str, str]] = {}
    for chunk in chunks(sorted({w.student_id for w in warnings}), CHUNK):
        for sid, name, no, class_name in session.execute(
                select(Student.id, Student.name, Student.student_no, SchoolClass.name)
                .join(SchoolClass, SchoolClass.id == Student.class_id).where(Student.id.in_(chunk))):
            students[sid] = (name, no, class_name)
    rules = _contributing_rules(session, [w.id for w in warnings])
    out = {}
    for w in warnings:
        name, no, class_name = students[w.student_id]
        actions = [book.by_id[r].action for r in rules.get(w.id, []) if r in book.by_id and book.by_id[r].action]
        out[w.id] = WarningView(
            id=w.id, category=w.category, level=w.level, status=w.status, sensitive=w.sensitive, student=name,
            student_no=no, class_name=class_name, evidence=[x for x in w.summary.splitlines() if x],
            actions=list(dict.fromkeys(actions)), opened_on=local(w.opened_at, tz).date(),
            escalated=w.escalated_at is not None)
    return out


def warning_view(session: Session, book: RuleBook, warning: RiskWarning, tz: tzinfo) -> WarningView:
    """The view of one warning."""
    return warning_views(session, book, [warning], tz)[warning.id]


def _contributing_rules(session: Session, warning_ids: Sequence[int]) -> dict[int, list[str]]:
    """Rule ids with evidence on each warning, in the order they first contributed."""
    out: dict[int, list[str]] = defaultdict(list)
    for chunk in chunks(sorted(set(warning_ids)), CHUNK):
        rows = session.execute(select(RiskWarningEvent.warning_id, RiskWarningEvent.rule_id).where(
            RiskWarningEvent.warning_id.in_(chunk), RiskWarningEvent.rule_id.is_not(None))
            .order_by(RiskWarningEvent.id))
        for wid, rid in rows:
            if rid not in out[wid]:
                out[wid].append(rid)
    return out
