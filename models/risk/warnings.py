"""Warnings: opening, adding evidence to, raising and reading them, from findings.

One warning is open per (student, category): new evidence updates it and may raise its level,
never opens a twin (the unique open_key decides, even against a concurrent writer). The changes
are decided in memory, then written a table at a time (warnings, events, routing, notices).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.authz import View
from models.cards import chunks
from models.outbox import insert_rows
from models.risk.aggregates import CHUNK
from models.risk.clock import aware, local
from models.risk.matching import Finding
from models.risk.notices import NoticeCount, Notify, need
from models.risk.routing import Advisers, Notifier, Recipient, Routing, may_see
from models.risk.rules import EVIDENCE_KINDS, LEVELS, OPEN, RuleBook
from models.schema import RiskWarning, RiskWarningEvent, RiskWarningRecipient, Staff

CLOSED_LOOKBACK_DAYS = 400  # closures older than this cannot hold back a rule (every window is shorter)


@dataclass
class Outcome:
    """What an evaluation did, for a job's one-line result."""

    students: int = 0
    opened: int = 0
    raised: int = 0
    evidence: int = 0
    held_back: int = 0
    notices: NoticeCount = field(default_factory=NoticeCount)

    def line(self) -> str:
        """The job's one-line result (keys and counts only)."""
        return (f"{self.opened} opened, {self.raised} raised, {self.evidence} updated, "
                f"{self.held_back} held back (cooldown or known evidence); "
                f"queued {self.notices.single} messages, {self.notices.bundled} bundled"
                + (f", {self.notices.no_account} people without WeCom account" if self.notices.no_account else ""))


@dataclass
class _Known:
    """The newest evidence of a rule on a warning: its signature and level."""

    signature: str | None
    level: str | None
    texts: list[str]


def _known_evidence(session: Session, warning_ids: Sequence[int]) -> dict[int, dict[str, _Known]]:
    """warning → rule → its newest evidence event."""
    out: dict[int, dict[str, _Known]] = defaultdict(dict)
    for chunk in chunks(sorted(set(warning_ids)), CHUNK):
        rows = session.execute(
            select(RiskWarningEvent.warning_id, RiskWarningEvent.rule_id, RiskWarningEvent.signature,
                   RiskWarningEvent.level, RiskWarningEvent.evidence)
            .where(RiskWarningEvent.warning_id.in_(chunk), RiskWarningEvent.rule_id.is_not(None),
                   RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
            .order_by(RiskWarningEvent.id))
        for wid, rid, sig, level, evidence in rows:
            texts = [e["text"] for e in json.loads(evidence)] if evidence else []
            out[wid][rid] = _Known(sig, level, texts)
    return out


def _recent_closures(session: Session, rule_ids: Sequence[str], students: Sequence[int] | None,
                     now: datetime) -> dict[tuple[int, str], tuple[datetime, str, str | None]]:
    """(student, rule) → (closed_at, level, signature) of the newest closed warning the rule fed."""
    since = now - timedelta(days=CLOSED_LOOKBACK_DAYS)
    query = (select(RiskWarning.student_id, RiskWarningEvent.rule_id, RiskWarning.closed_at, RiskWarningEvent.level,
                    RiskWarningEvent.signature)
             .join(RiskWarning, RiskWarning.id == RiskWarningEvent.warning_id)
             .where(RiskWarning.status != OPEN, RiskWarning.closed_at >= since,
                    RiskWarningEvent.rule_id.in_(list(rule_ids)), RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
             .order_by(RiskWarning.closed_at, RiskWarningEvent.id))
    out: dict[tuple[int, str], tuple[datetime, str, str | None]] = {}
    parts = [None] if students is None else list(chunks(sorted(set(students)), CHUNK))
    for chunk in parts:
        q = query if chunk is None else query.where(RiskWarning.student_id.in_(chunk))
        for sid, rid, closed_at, level, sig in session.execute(q):
            out[(sid, rid)] = (aware(closed_at), level or "关注", sig)
    return out


def _load_open(session: Session, keys: set[tuple[int, str]]) -> dict[tuple[int, str], RiskWarning]:
    students = sorted({s for s, _c in keys})
    out = {}
    for chunk in chunks(students, CHUNK):
        for w in session.scalars(select(RiskWarning).where(RiskWarning.status == OPEN,
                                                           RiskWarning.student_id.in_(chunk))):
            out[(w.student_id, w.category)] = w
    return out


def open_key(student_id: int, category: str) -> str:
    """The key that keeps one warning open per (student, category)."""
    return f"{student_id}/{category}"


def _open_warnings(session: Session, rows: list[dict]) -> dict[str, RiskWarning]:
    """Insert new open warnings; open_key → each one inserted (one whose key is taken is left out)."""
    written = insert_rows(session, RiskWarning, rows, skip_conflicts=True, conflict_columns=["open_key"],
                          returning=(RiskWarning,))
    return {w.open_key: w for (w,) in written}


def event_row(warning_id: int, kind: str, now: datetime, finding: Finding | None = None,
              texts: Sequence[str] = (), *, level: str | None = None, note: str | None = None,
              actor_id: int | None = None, actor: str = "system") -> dict:
    """A warning event, as a row to insert (`texts`: the words of the finding's evidence)."""
    return dict(
        warning_id=warning_id, at=now, kind=kind, level=level or (finding.level if finding else None),
        rule_id=finding.rule.id if finding else None, signature=finding.signature if finding else None,
        evidence=json.dumps([e.as_json(t) for e, t in zip(finding.evidence, texts, strict=True)],
                            ensure_ascii=False) if finding else None,
        note=note if note is not None else (finding.note if finding else None),
        actor_id=actor_id if actor_id is not None else (finding.actor_id if finding else None),
        actor=finding.actor if finding and actor == "system" else actor,
    )


def write_events(session: Session, rows: list[dict]) -> None:
    """Insert events in order; each row learns its id (a flag's keys its notices)."""
    ids = sorted(i for (i,) in insert_rows(session, RiskWarningEvent, rows, returning=(RiskWarningEvent.id,)))
    for row, event_id in zip(rows, ids, strict=True):
        row["id"] = event_id


def write_recipients(session: Session, rows: list[dict]) -> None:
    """Insert routing rows (one a concurrent writer added already is skipped)."""
    insert_rows(session, RiskWarningRecipient, rows, skip_conflicts=True)


class _Said:
    """The words of each finding's evidence, rendered once, and only for the findings written."""

    def __init__(self, notify: Notify | None) -> None:
        self.notify = notify
        self._texts: dict[int, list[str]] = {}

    def __call__(self, finding: Finding) -> list[str]:
        texts = self._texts.get(id(finding))
        if texts is None:
            words = need(self.notify)
            texts = self._texts[id(finding)] = [words.evidence_text(e) for e in finding.evidence]
        return texts


@dataclass
class _Change:
    """What an evaluation does to one warning, kept until its events have ids."""

    warning: RiskWarning
    evidence: dict[str, _Known]
    findings: list[Finding]
    event_key: str | None  # opened | raised:严重 | None: new evidence at the same level
    flag: dict | None = None  # the event row of a flag, whose id keys its notices

    @property
    def key(self) -> str | None:
        """The event people are told of (None: new evidence at the same level)."""
        return self.event_key or (f"flag:{self.flag['id']}" if self.flag else None)


def apply_findings(session: Session, book: RuleBook, findings: list[Finding], now: datetime,
                   notifier: Notifier) -> Outcome:
    """Open, update or raise warnings from findings; route them; collect the notices (the caller flushes).

    Every change is decided in memory first, then written a table at a time: the new warnings
    (those a concurrent writer opened meanwhile are joined instead), the events, the routing.
    """
    out = Outcome()
    said = _Said(notifier.notify)
    groups: dict[tuple[int, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.student_id, f.rule.category)].append(f)
    if not groups:
        return out
    open_now = _load_open(session, set(groups))
    known = _known_evidence(session, [w.id for w in open_now.values()])
    routing = Routing().load(session, [w.id for w in open_now.values()])
    automatic = sorted({f.rule.id for f in findings if f.rule.kind != "manual"})
    students = [s for s, _c in groups]
    closures = _recent_closures(session, automatic, students if len(students) < 2000 else None, now) \
        if automatic else {}
    advisers = Advisers.load(session, set(students))
    # The most serious first, so that they are the ones sent alone when a weekly cap is reached.
    order = sorted(groups, key=lambda k: (-max(f.rank for f in groups[k]), k))
    ranked = {k: sorted(groups[k], key=lambda f: (-f.rank, f.rule.id)) for k in order}
    opening: dict[tuple[int, str], list[Finding]] = {}
    for key in order:
        if key not in open_now:
            kept = [f for f in ranked[key]
                    if f.rule.kind == "manual" or _may_reopen(f, closures.get((key[0], f.rule.id)), now)]
            out.held_back += len(ranked[key]) - len(kept)
            if kept:
                opening[key] = ranked[key] = kept
    evidence_of = {key: {f.rule.id: _Known(f.signature, f.level, said(f)) for f in group}
                   for key, group in opening.items()}
    created = _open_or_join(session, book, opening, evidence_of, now, open_now, known, routing)
    events: list[dict] = []
    changes: list[_Change] = []
    for key in order:
        if key in created:
            warning, group = created[key], opening[key]
            out.opened += 1
            events.append(event_row(warning.id, "opened", now, group[0], said(group[0])))
            events += [event_row(warning.id, "evidence", now, f, said(f)) for f in group[1:]]
            changes.append(_Change(warning, evidence_of[key], group, "opened"))
        elif key in open_now:
            change = _update(book, open_now[key], ranked[key], known[open_now[key].id], now, out, events, said)
            if change is not None:
                changes.append(change)
    write_events(session, events)
    recipients: list[dict] = []
    for c in changes:
        _route(book, c.warning, c.evidence, advisers, routing, notifier, now, c.key, c.findings, recipients)
    write_recipients(session, recipients)
    out.notices = notifier.count
    return out


def _open_or_join(session: Session, book: RuleBook, opening: dict[tuple[int, str], list[Finding]],
                  evidence_of: dict[tuple[int, str], dict[str, _Known]], now: datetime,
                  open_now: dict[tuple[int, str], RiskWarning], known: dict[int, dict[str, _Known]],
                  routing: Routing) -> dict[tuple[int, str], RiskWarning]:
    """Insert the new warnings; returns those inserted. Where a concurrent writer opened one a
    moment ago (the unique open_key decides), theirs joins `open_now` to be added to instead."""
    created: dict[tuple[int, str], RiskWarning] = {}
    todo = list(opening)
    for _attempt in range(3):
        inserted = _open_warnings(session, [dict(
            student_id=sid, category=category, level=opening[(sid, category)][0].level, status=OPEN,
            sensitive=any(book.is_sensitive(f.rule) for f in opening[(sid, category)]),
            open_key=open_key(sid, category), summary=_summary(book, evidence_of[(sid, category)]),
            opened_at=now, updated_at=now) for sid, category in todo])
        created |= {k: inserted[open_key(*k)] for k in todo if open_key(*k) in inserted}
        taken = {k for k in todo if k not in created}
        if not taken:
            return created
        theirs = {k: w for k, w in _load_open(session, taken).items() if k in taken}
        open_now.update(theirs)
        known.update(_known_evidence(session, [w.id for w in theirs.values()]))
        routing.load(session, [w.id for w in theirs.values()])
        todo = [k for k in todo if k in taken and k not in theirs]  # closed again meanwhile: open anew
        if not todo:
            return created
    raise RuntimeError(f"could not open or find the open warning of {todo[:3]}")


def _may_reopen(f: Finding, closed: tuple[datetime, str, str | None] | None, now: datetime) -> bool:
    """After a closure the rule warns again only on changed evidence, past its cooldown or at a higher level."""
    if closed is None:
        return True
    closed_at, level, signature = closed
    if signature == f.signature:
        return False
    return f.rank > LEVELS.index(level) or now - closed_at >= timedelta(days=f.rule.cooldown_days)


def _update(book: RuleBook, warning: RiskWarning, group: list[Finding], evidence: dict[str, _Known],
            now: datetime, out: Outcome, events: list[dict], said: _Said) -> _Change | None:
    """Add new evidence to an open warning and raise its level when a finding calls for more."""
    fresh = [f for f in group
             if f.rule.kind == "manual" or f.rule.id not in evidence or evidence[f.rule.id].signature != f.signature]
    if not fresh:
        return None
    top = max(fresh, key=lambda f: f.rank)
    raise_to = top.level if top.rank > LEVELS.index(warning.level) else None
    flag = None
    for f in fresh:
        kind = "flagged" if f.rule.kind == "manual" else ("raised" if raise_to and f is top else "evidence")
        events.append(event_row(warning.id, kind, now, f, said(f)))
        if kind == "flagged" and flag is None:
            flag = events[-1]
        evidence[f.rule.id] = _Known(f.signature, f.level, said(f))
    warning.sensitive = warning.sensitive or any(book.is_sensitive(f.rule) for f in fresh)
    if raise_to:
        warning.level = raise_to
        out.raised += 1
    else:
        out.evidence += 1
    warning.summary = _summary(book, evidence)
    warning.updated_at = now
    return _Change(warning, evidence, fresh, f"raised:{raise_to}" if raise_to else None,
                   None if raise_to else flag)


def _summary(book: RuleBook, evidence: dict[str, _Known]) -> str:
    """A warning's summary: the newest evidence of each rule, the most serious rule first."""
    def rank(rid: str) -> tuple[int, str]:
        rule = book.by_id.get(rid)
        return (-(rule.rank if rule else 0), rid)

    lines = []
    for rid in sorted(evidence, key=rank):
        lines += evidence[rid].texts
    return "\n".join(dict.fromkeys(lines))


def _route(book: RuleBook, warning: RiskWarning, evidence: dict[str, _Known], advisers: Advisers,
           routing: Routing, notifier: Notifier, now: datetime, event_key: str | None,
           findings: list[Finding], new_rows: list[dict]) -> None:
    """Add the recipients every contributing rule asks for (to `new_rows`), then collect their notices.

    Someone not told of the warning yet hears of it whole ("opened"); the others hear of the
    event (a raise, a new flag); new evidence at the same level tells only the newcomers.
    """
    relations = {rel for rid in evidence if rid in book.by_id for rel in book.by_id[rid].recipients}
    rows = routing.recipients[warning.id]
    recorders = frozenset().union(*(f.recorders for f in findings))
    for staff_id, relation in advisers.people(warning.student_id, relations, warning.sensitive, recorders).items():
        if staff_id not in rows:
            rows[staff_id] = Recipient(0, relation)
            new_rows.append(dict(warning_id=warning.id, staff_id=staff_id, relation=relation, escalated=False,
                                 added_at=now))
    authors = {f.actor_id for f in findings if f.actor_id is not None}
    flagged = any(f.rule.kind == "manual" for f in findings)  # a person's flag is always sent alone
    told = routing.told[warning.id]
    for staff_id, row in sorted(rows.items()):
        if not may_see(warning, row.relation) or (row.escalated and event_key is None):
            continue
        if staff_id in authors:
            # The author of a flag knows it: marked as told, without a message.
            for key in ("opened", event_key):
                if key and (staff_id, key) not in told:
                    notifier.mark_told(warning, staff_id, key)
                    told.add((staff_id, key))
            continue
        if not any(s == staff_id for s, _k in told):
            notifier.add(warning, staff_id, "opened", capped=not flagged)
        elif event_key and event_key != "opened":
            notifier.add(warning, staff_id, event_key, capped=not flagged)



# ── reading ──────────────────────────────────────────────────────────────────

def open_warnings_for(session: Session, staff_id: int) -> list[RiskWarning]:
    """Open warnings routed or escalated to a person (sensitive ones only through a sensitive relation)."""
    rows = session.execute(select(RiskWarning, RiskWarningRecipient.relation).join(
        RiskWarningRecipient, RiskWarningRecipient.warning_id == RiskWarning.id).where(
        RiskWarningRecipient.staff_id == staff_id, RiskWarning.status == OPEN)).all()
    found = [w for w, relation in rows if may_see(w, relation)]
    return sorted(found, key=lambda w: (-LEVELS.index(w.level), w.opened_at, w.id))


@dataclass(frozen=True)
class HistoryLine:
    """One warning on the staff view of a card."""

    id: int
    opened_on: date
    category: str
    level: str
    status: str  # open | handled | false_alarm
    closed_on: date | None
    closed_by: str | None
    note: str | None
    headline: str


def warning_history(session: Session, book: RuleBook, student_id: int, view: View, tz: tzinfo) -> list[HistoryLine]:
    """A student's warnings a viewer may see: the categories of the domains they see; sensitive
    warnings only to those who see sensitive points."""
    if not view.domains:
        return []
    visible = [c.name for c in book.categories.values() if c.domain in view.domains]
    query = select(RiskWarning, Staff.name).outerjoin(Staff, Staff.id == RiskWarning.closed_by).where(
        RiskWarning.student_id == student_id, RiskWarning.category.in_(visible))
    if not view.sensitive:
        query = query.where(RiskWarning.sensitive.is_(False))
    rows = session.execute(query.order_by((RiskWarning.status == OPEN).desc(), RiskWarning.opened_at.desc(),
                                          RiskWarning.id.desc()).limit(book.policy.history_on_card)).all()
    return [HistoryLine(w.id, local(w.opened_at, tz).date(), w.category, w.level, w.status,
                        local(w.closed_at, tz).date() if w.closed_at else None, name, w.close_note,
                        (w.summary.splitlines() or [""])[0]) for w, name in rows]


def history(session: Session, warning: RiskWarning) -> list[RiskWarningEvent]:
    """A warning's events, oldest first."""
    return list(session.scalars(select(RiskWarningEvent).where(RiskWarningEvent.warning_id == warning.id)
                                .order_by(RiskWarningEvent.id)))

