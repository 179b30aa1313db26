"""Score entries in the database: writing records with their audit, undo, and loading cards."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from models.card import Card, Entry, build_card, derive_class_values, point_values, with_previous
from models.catalogue import Catalogue, ScorePoint
from models.periods import Calendar, Term, month_bounds, week_bounds
from models.schema import AuditLog, RecordingBatch, ScoreEntry, Semester, Student, utcnow


def load_calendar(session: Session) -> Calendar:
    """The 校历 from the database (empty: the default rule)."""
    rows = session.scalars(select(Semester)).all()
    return Calendar([Term(r.year, r.term, r.start, r.end) for r in rows])


@dataclass(frozen=True)
class PlannedEntry:
    """A checked line of a recording, ready to write."""

    point: ScorePoint
    student_id: int | None
    class_id: int | None
    subject_name: str
    value: float
    occurred_on: date
    period_key: str
    semester_key: str


def _subject_key(e: ScoreEntry | PlannedEntry) -> str:
    who = f"student:{e.student_id}" if e.student_id else f"class:{e.class_id}"
    code = e.point.code if isinstance(e, PlannedEntry) else e.point_code
    return f"{who}/{code}/{e.period_key}"


def _superseded(session: Session, planned: list[PlannedEntry]) -> dict[str, tuple[int, float]]:
    """(entry id, value) of the live entries that replacing records supersede, by subject key.

    One query per point and period; count and observation points add rather than
    replace, so they supersede nothing.
    """
    groups: dict[tuple[str, str, str], list[PlannedEntry]] = {}
    for p in planned:
        if not (p.point.accumulates or p.point.is_observation):
            groups.setdefault((p.point.code, p.period_key, p.semester_key), []).append(p)
    found: dict[str, tuple[int, float]] = {}
    for (code, period, semester), group in groups.items():
        students = [p.student_id for p in group if p.student_id]
        classes = [p.class_id for p in group if not p.student_id]
        subject = or_(ScoreEntry.student_id.in_(students), ScoreEntry.class_id.in_(classes))
        rows = session.execute(
            select(ScoreEntry.id, ScoreEntry.student_id, ScoreEntry.class_id, ScoreEntry.value)
            .where(subject, ScoreEntry.point_code == code, ScoreEntry.period_key == period,
                   ScoreEntry.semester_key == semester, ScoreEntry.revoked_at.is_(None))
            .order_by(ScoreEntry.id)
        )
        for r in rows:
            who = f"student:{r.student_id}" if r.student_id else f"class:{r.class_id}"
            found[f"{who}/{code}/{period}"] = (r.id, r.value)  # ascending ids: the newest wins
    return found


def record_entries(session: Session, actor_name: str, recorder_id: int | None,
                   planned: list[PlannedEntry], *, text: str, source: str = "chat",
                   source_msg: str | None = None) -> tuple[RecordingBatch, list[ScoreEntry]]:
    """Write one recording (a message or an import) with an audit row per entry.

    Core inserts (a round trip per table, whatever the number of entries); the
    returned rows are detached copies. The caller commits: one message, one transaction.
    """
    now = utcnow()
    session.flush()
    batch_id = session.execute(insert(RecordingBatch).values(
        recorder_id=recorder_id, source=source, source_msg=source_msg, text=text, created_at=now,
    ).returning(RecordingBatch.id)).scalar_one()
    superseded = _superseded(session, planned)
    values = [dict(
        point_code=p.point.code, student_id=p.student_id, class_id=p.class_id, period_key=p.period_key,
        semester_key=p.semester_key, occurred_on=p.occurred_on, value=p.value, recorder_id=recorder_id,
        batch_id=batch_id, source=source, source_msg=source_msg, created_at=now,
    ) for p in planned]
    ids = session.scalars(insert(ScoreEntry).returning(ScoreEntry.id, sort_by_parameter_order=True),
                          values).all()
    audits = []
    for p, entry_id, v in zip(planned, ids, values, strict=True):
        previous = superseded.get(_subject_key(p))
        audits.append(dict(
            at=now, actor=actor_name, action="record", entity="score_entry", entity_key=_subject_key(p),
            old_value=None if previous is None else json.dumps({"entry": previous[0], "value": previous[1]}),
            new_value=json.dumps({"entry": entry_id, "value": v["value"]}), source_msg=source_msg,
        ))
    session.execute(insert(AuditLog), audits)
    batch = RecordingBatch(id=batch_id, recorder_id=recorder_id, source=source, source_msg=source_msg,
                           text=text, created_at=now)
    return batch, [ScoreEntry(id=i, **v) for i, v in zip(ids, values, strict=True)]


def last_batch(session: Session, recorder_id: int) -> RecordingBatch | None:
    """The recorder's most recent recording that is not undone yet."""
    return session.scalar(
        select(RecordingBatch)
        .where(RecordingBatch.recorder_id == recorder_id, RecordingBatch.revoked_at.is_(None))
        .order_by(RecordingBatch.id.desc())
        .limit(1)
    )


def revoke(session: Session, actor_name: str, recorder_id: int, entries: list[ScoreEntry],
           source_msg: str | None) -> None:
    """Undo entries: a recorded change (revoked_at + audit), never a delete."""
    now = utcnow()
    for e in entries:
        e.revoked_at = now
        e.revoked_by = recorder_id
        session.add(AuditLog(
            actor=actor_name, action="revoke", entity="score_entry", entity_key=_subject_key(e),
            old_value=json.dumps({"entry": e.id, "value": e.value}), new_value=None,
            source_msg=source_msg,
        ))


def _to_entry(row) -> Entry:  # noqa: ANN001 - a Row of the select below
    return Entry(row.id, row.point_code, row.period_key, row.occurred_on, row.value)


def _entry_query(term: Term):
    return select(
        ScoreEntry.id, ScoreEntry.point_code, ScoreEntry.period_key, ScoreEntry.occurred_on,
        ScoreEntry.value, ScoreEntry.student_id,
    ).where(
        ScoreEntry.revoked_at.is_(None),
        or_(ScoreEntry.semester_key == term.key, ScoreEntry.period_key == term.year),
    )


def previous_cutoff(catalogue: Catalogue, today: date) -> date:
    """The last day of the period value added is measured against."""
    if catalogue.formula.compare == "month":
        return month_bounds(today)[0] - timedelta(days=1)
    return week_bounds(today)[0] - timedelta(days=1)


def student_card(session: Session, catalogue: Catalogue, cal: Calendar, student_id: int,
                 today: date, visible=lambda p: True) -> tuple[Card, list[ScoreEntry]]:  # noqa: ANN001
    """A student's card for the semester containing `today`, with value added and latest entries."""
    term = cal.term_for(today)
    points = catalogue.individual()
    rows = session.execute(_entry_query(term).where(ScoreEntry.student_id == student_id)).all()
    entries = [_to_entry(r) for r in rows if r.occurred_on <= today]
    card = build_card(catalogue, point_values(catalogue, entries), visible, points)
    cutoff = previous_cutoff(catalogue, today)
    if cutoff >= term.start:
        before = point_values(catalogue, entries, cutoff)
    else:
        prev_term = cal.previous_term(term)
        prev_rows = session.execute(
            _entry_query(prev_term).where(ScoreEntry.student_id == student_id)).all()
        before = point_values(catalogue, [_to_entry(r) for r in prev_rows])
    with_previous(card, build_card(catalogue, before, visible, points))
    shown = [p.code for p in points if visible(p)]
    latest = session.scalars(
        select(ScoreEntry)
        .where(ScoreEntry.student_id == student_id, ScoreEntry.revoked_at.is_(None),
               ScoreEntry.point_code.in_(shown), ScoreEntry.occurred_on <= today)
        .order_by(ScoreEntry.occurred_on.desc(), ScoreEntry.id.desc())
        .limit(3)
    ).all()
    return card, list(latest)


def _class_values(session: Session, catalogue: Catalogue, term: Term, class_id: int,
                  cutoff: date) -> dict:
    student_ids = list(session.scalars(select(Student.id).where(Student.class_id == class_id)))
    sources = sorted({p.derived.of for p in catalogue.for_class() if p.derived})
    rows = session.execute(
        _entry_query(term).where(ScoreEntry.point_code.in_(sources),
                                 ScoreEntry.student_id.in_(student_ids))
    ).all() if student_ids else []
    by_student: dict[int, list[Entry]] = {}
    for r in rows:
        by_student.setdefault(r.student_id, []).append(_to_entry(r))
    per_student = [point_values(catalogue, es, cutoff) for es in by_student.values()]
    own = session.execute(_entry_query(term).where(ScoreEntry.class_id == class_id)).all()
    values = point_values(catalogue, [_to_entry(r) for r in own], cutoff)
    values.update(derive_class_values(catalogue, per_student, len(student_ids)))
    return values


def class_card(session: Session, catalogue: Catalogue, cal: Calendar, class_id: int,
               today: date, visible=lambda p: True) -> Card:  # noqa: ANN001
    """A class card: typed class points and points derived from the students' entries."""
    term = cal.term_for(today)
    points = catalogue.for_class()
    card = build_card(catalogue, _class_values(session, catalogue, term, class_id, today),
                      visible, points)
    cutoff = previous_cutoff(catalogue, today)
    if cutoff >= term.start:
        before = _class_values(session, catalogue, term, class_id, cutoff)
    else:
        prev = cal.previous_term(term)
        before = _class_values(session, catalogue, prev, class_id, prev.end)
    return with_previous(card, build_card(catalogue, before, visible, points))
