"""The ways into the warnings: the daily scan, the check after a recording, a person's flag,
closing a warning (处理 / 误报) and the escalation of warnings left unhandled.

Each decides, writes the warnings and queues their notices in the caller's transaction; the
words come from `notify` (models/risk/notices.Notify), the time zone from the settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.cards import chunks
from models.catalogue import Catalogue
from models.db import tune_for_aggregates
from models.periods import Calendar
from models.risk.aggregates import CHUNK
from models.risk.clock import as_utc, aware
from models.risk.matching import Finding, evidence, find, rules_touched
from models.risk.notices import NoticeCount, Notify, need
from models.risk.routing import Advisers, Notifier, Routing, may_see, routed_names
from models.risk.rules import FALSE_ALARM, HANDLED, LEVELS, OPEN, Category, RuleBook
from models.risk.warnings import Outcome, apply_findings, event_row, open_key, write_events, write_recipients
from models.schema import RiskWarning, RiskWarningEvent, ScoreEntry, Staff, Student


def scan(session: Session, book: RuleBook, catalogue: Catalogue, cal: Calendar, now: datetime, today: date, *,
         notify: Notify | None, tz: tzinfo) -> Outcome:
    """The daily scan: every automatic rule for every student, from aggregates."""
    now = as_utc(now)
    tune_for_aggregates(session)
    findings = find(session, book, catalogue, cal, today, book.automatic())
    notifier = Notifier(session, book, today, notify, tz)
    out = apply_findings(session, book, findings, now, notifier)
    out.students = len({f.student_id for f in findings})
    notifier.flush()
    out.notices = notifier.count
    return out


def evaluate_entries(session: Session, book: RuleBook, catalogue: Catalogue, cal: Calendar,
                     entries: Sequence[ScoreEntry], now: datetime, today: date, *, notify: Notify | None,
                     tz: tzinfo) -> Outcome:
    """Right after a recording: the rules whose points (or trend domain) it touched, for its students."""
    now = as_utc(now)
    students = sorted({e.student_id for e in entries if e.student_id})
    rules = rules_touched(book, catalogue, entries)
    if not students or not rules:
        return Outcome()
    notifier = Notifier(session, book, today, notify, tz)
    out = apply_findings(session, book, find(session, book, catalogue, cal, today, rules, students),
                         now, notifier)
    notifier.flush()
    out.notices = notifier.count
    return out


# ── people acting on warnings ────────────────────────────────────────────────

@dataclass(frozen=True)
class Person:
    """A staff member acting in chat: id, display and audit names, and their relation label."""

    staff_id: int
    name: str
    audit_name: str
    role: str = ""


def raise_flag(session: Session, book: RuleBook, student: Student, category: Category, level: str | None,
               note: str, author: Person, now: datetime, today: date, *, notify: Notify | None,
               tz: tzinfo) -> tuple[RiskWarning, bool, list[str]]:
    """A manual flag: opens the category's warning or adds to the open one; returns it, whether new,
    and the names of the people it is routed to."""
    now = as_utc(now)
    rule = book.manual(category.name)
    said = evidence(None, "flag", today, f"flag:{author.staff_id}:{now.isoformat()}",
                    author=author.name, role=author.role, day=f"{today:%m-%d}", note=note)
    finding = Finding(student.id, rule, level or rule.level, (said,), actor_id=author.staff_id,
                      actor=author.audit_name, note=note)
    key = open_key(student.id, category.name)
    existing = session.scalar(select(RiskWarning).where(RiskWarning.open_key == key))
    notifier = Notifier(session, book, today, notify, tz)
    apply_findings(session, book, [finding], now, notifier)
    notifier.flush()
    warning = session.scalar(select(RiskWarning).where(RiskWarning.open_key == key))
    assert warning is not None
    return warning, existing is None, routed_names(session, warning)


def close_warning(session: Session, book: RuleBook, warning: RiskWarning, person: Person, note: str,
                  false_alarm: bool, now: datetime, today: date, *, notify: Notify | None, tz: tzinfo) -> list[int]:
    """处理 / 误报: record the action, close the warning, tell the flags' authors; returns whom it told."""
    now = as_utc(now)
    kind = FALSE_ALARM if false_alarm else HANDLED
    warning.status = kind
    warning.open_key = None
    warning.closed_at = now
    warning.closed_by = person.staff_id
    warning.close_note = note
    warning.updated_at = now
    write_events(session, [event_row(warning.id, kind, now, level=warning.level, note=note,
                                     actor_id=person.staff_id, actor=person.audit_name)])
    manual = [r.id for r in book.rules if r.kind == "manual"]
    authors = sorted(set(session.scalars(select(RiskWarningEvent.actor_id).where(
        RiskWarningEvent.warning_id == warning.id, RiskWarningEvent.rule_id.in_(manual),
        RiskWarningEvent.actor_id.is_not(None)))) - {person.staff_id})
    notifier = Notifier(session, book, today, notify, tz)
    for staff_id in authors:
        notifier.add(warning, staff_id, "handled", capped=False, handler=person.name, note=note,
                     false_alarm=false_alarm)
    notifier.flush()
    return authors


def escalate(session: Session, book: RuleBook, now: datetime, today: date, *, notify: Notify | None,
             tz: tzinfo) -> tuple[int, NoticeCount]:
    """Open warnings past the escalation delay go to the department's 学工办 and 系部主任 (not sensitive)."""
    now = as_utc(now)
    due = now - timedelta(days=book.policy.escalate_after_days)
    warnings = list(session.scalars(select(RiskWarning).where(
        RiskWarning.status == OPEN, RiskWarning.escalated_at.is_(None), RiskWarning.opened_at <= due,
        RiskWarning.level.in_(book.policy.escalate_levels)).order_by(RiskWarning.id)))
    if not warnings:
        return 0, NoticeCount()
    words = need(notify)
    advisers = Advisers.load(session, {w.student_id for w in warnings})
    routing = Routing().load(session, [w.id for w in warnings])
    names = _staff_names(session, {s for rows in routing.recipients.values() for s in rows})
    notifier = Notifier(session, book, today, notify, tz)
    events: list[dict] = []
    recipients: list[dict] = []
    for warning in sorted(warnings, key=lambda w: (-LEVELS.index(w.level), w.id)):
        days = (now - aware(warning.opened_at)).days
        rows = routing.recipients[warning.id]
        before = [f"{names.get(s, '')}（{r.relation}）" for s, r in sorted(rows.items(), key=lambda i: i[1].id)
                  if may_see(warning, r.relation)]
        warning.escalated_at = now
        events.append(event_row(warning.id, "escalated", now, level=warning.level,
                                note=words.escalation_note(days, warning.sensitive)))
        office = advisers.people(warning.student_id, ("学工办", "系部主任"), warning.sensitive)
        for staff_id, relation in office.items():
            if staff_id not in rows:
                recipients.append(dict(warning_id=warning.id, staff_id=staff_id, relation=relation, escalated=True,
                                       added_at=now))
            notifier.add(warning, staff_id, "escalated", days=days, routed=before)
    write_events(session, events)
    write_recipients(session, recipients)
    notifier.flush()
    return len(warnings), notifier.count


def _staff_names(session: Session, staff_ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks(sorted(staff_ids), CHUNK):
        out.update(dict(session.execute(select(Staff.id, Staff.name).where(Staff.id.in_(chunk))).all()))
    return out
