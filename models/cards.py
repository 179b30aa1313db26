"""Loading cards from the database: one student's, a class's, and many students' at once.

Every card here is built by `models.card` (the one formula) from entries loaded by one query shape;
now and before are scored in one formula run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.card import Card, Entry, build_cards, derive_class_values, point_values, with_previous
from models.catalogue import Catalogue, ScorePoint
from models.periods import Calendar, Term, month_bounds, week_bounds
from models.schema import ScoreEntry, Student

CHUNK = 1000  # students per query when loading many cards


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
    cutoff = previous_cutoff(catalogue, today)
    if cutoff >= term.start:
        before = point_values(catalogue, entries, cutoff)
    else:
        prev_term = cal.previous_term(term)
        prev_rows = session.execute(
            _entry_query(prev_term).where(ScoreEntry.student_id == student_id)).all()
        before = point_values(catalogue, [_to_entry(r) for r in prev_rows])
    card = _with_before(catalogue, point_values(catalogue, entries), before, visible, points)
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
    now = _class_values(session, catalogue, term, class_id, today)
    cutoff = previous_cutoff(catalogue, today)
    if cutoff >= term.start:
        before = _class_values(session, catalogue, term, class_id, cutoff)
    else:
        prev = cal.previous_term(term)
        before = _class_values(session, catalogue, prev, class_id, prev.end)
    return _with_before(catalogue, now, before, visible, points)


def _with_before(catalogue: Catalogue, now: dict, before: dict, visible: Callable[[ScorePoint], bool],
                 points: list[ScorePoint]) -> Card:
    """A card from its point values now, with value added against those before (one formula run)."""
    cards = build_cards(catalogue, {0: now, 1: before}, visible, points)
    return with_previous(cards[0], cards[1])


# ── cards of many students ───────────────────────────────────────────────────


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`items` in slices of `size`."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def load_entries(session: Session, term: Term, student_ids: Sequence[int]) -> dict[int, list[Entry]]:
    """Live entries of the semester for many students: one query per CHUNK students."""
    out: dict[int, list[Entry]] = defaultdict(list)
    for chunk in chunks(list(student_ids), CHUNK):
        for row in session.execute(_entry_query(term).where(ScoreEntry.student_id.in_(chunk))):
            out[row.student_id].append(_to_entry(row))
    return out


def cards_from_entries(catalogue: Catalogue, entries: Mapping[int, list[Entry]], today: date, cutoff: date,
                       previous_entries: Mapping[int, list[Entry]] | None, student_ids: Sequence[int],
                       visible: Callable[[ScorePoint], bool] = lambda p: True) -> dict[int, Card]:
    """Students' cards from loaded entries, exactly as `student_card` builds them, in two formula runs.

    `previous_entries` is None when `cutoff` falls inside the semester (value added is then
    measured against the same entries up to `cutoff`), else the previous semester's entries.
    """
    points = catalogue.individual()
    now, before = {}, {}
    for sid in student_ids:
        current = [e for e in entries.get(sid, []) if e.occurred_on <= today]
        now[sid] = point_values(catalogue, current)
        if previous_entries is None:
            before[sid] = point_values(catalogue, current, cutoff)
        else:
            before[sid] = point_values(catalogue, previous_entries.get(sid, []))
    cards = build_cards(catalogue, now, visible, points)
    previous = build_cards(catalogue, before, visible, points)
    return {sid: with_previous(cards[sid], previous[sid]) for sid in student_ids}


def student_cards(session: Session, catalogue: Catalogue, cal: Calendar, student_ids: Sequence[int],
                  today: date, *, cutoff: date | None = None) -> dict[int, Card]:
    """Cards of many students at once (a few queries per 1,000 students), equal to `student_card`'s."""
    term = cal.term_for(today)
    cutoff = previous_cutoff(catalogue, today) if cutoff is None else cutoff
    entries = load_entries(session, term, student_ids)
    previous = load_entries(session, cal.previous_term(term), student_ids) if cutoff < term.start else None
    return cards_from_entries(catalogue, entries, today, cutoff, previous, student_ids)
