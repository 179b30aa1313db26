"""Windows and set-based aggregates: one GROUP BY per evaluation, whatever the number of rules.

A rule reads a point's values over a window (`28d`, `semester`, `year`); every window of every
rule comes from one query over their union (see `aggregates`), then matching is pure Python.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta

from sqlalchemy import ColumnElement, Integer, and_, case, cast, func, literal_column, or_, select
from sqlalchemy.orm import Session

from models.cards import chunks
from models.catalogue import Catalogue, ScorePoint
from models.db import in_ids, plain_rows
from models.periods import UNIT_OF_PERIOD, Calendar, unit_bounds
from models.risk.rules import WINDOW_DAYS
from models.schema import ScoreEntry

CHUNK = 900  # ids per IN list (SQLite's bound parameters)

def window_bounds(window: str, today: date, cal: Calendar) -> tuple[date, date]:
    """First and last day of a rule window ending today."""
    match = WINDOW_DAYS.match(window)
    if match:
        return today - timedelta(days=int(match.group(1)) - 1), today
    unit = "semester" if window == "semester" else "year"
    return unit_bounds(unit, today, cal)[0], today


def semesters_between(cal: Calendar, start: date, end: date) -> list[str]:
    """Keys of the semesters that days in [start, end] belong to (every entry is filed under one)."""
    keys, term = [], cal.term_for(start)
    while term.start <= end or term.contains(start):
        keys.append(term.key)
        nxt = cal.next_term(term)
        if nxt.key == term.key or nxt.start <= term.start:
            break
        term = nxt
    return keys


def window_label(window: str) -> str:
    """How a window reads in a message: 近4周, 近30天, 本学期, 本学年."""
    match = WINDOW_DAYS.match(window)
    if match:
        days = int(match.group(1))
        return f"近{days // 7}周" if days % 7 == 0 else f"近{days}天"
    return "本学期" if window == "semester" else "本学年"


@dataclass(frozen=True, slots=True)  # a scan makes 100,000s of them
class Aggregate:
    """One student's point over a window: how many values, their total and mean, the newest."""

    n: int
    total: float
    mean: float
    last_on: date | None
    latest: float | None = None

    def measure(self, name: str) -> float | None:
        return float(self.n) if name == "count" else getattr(self, _FIELD_OF_MEASURE[name])


_FIELD_OF_MEASURE = {"mean": "mean", "sum": "total", "latest": "latest"}


def replaces(point: ScorePoint) -> bool:
    """A point whose newer entry replaces the older one in the same period (not counts, not sessions)."""
    return not (point.accumulates or point.is_observation)


@dataclass(frozen=True)
class Window:
    """Days and the points aggregated over them: a rule's window, or a trend's baseline."""

    start: date
    end: date
    codes: frozenset[str]
    latest: frozenset[str] = frozenset()  # points whose newest value is read, not only counted

    @property
    def span(self) -> tuple[date, date]:
        return self.start, self.end


def valued_by_latest(point: ScorePoint) -> bool:
    """A point whose value over a window is its newest entry (a semester score, a level)."""
    return replaces(point) and UNIT_OF_PERIOD[point.period] not in ("week", "month")


def aggregates(session: Session, catalogue: Catalogue, cal: Calendar, windows: Sequence[Window],
               students: Sequence[int] | None = None) -> dict[tuple[date, date], dict[tuple[int, str], Aggregate]]:
    """Aggregates per (student, point) over every window, from ONE GROUP BY over their union.

    Session observations and counts aggregate every live entry; other points keep the newest
    entry of each period (as the card does), then average those, and `latest` is the newest.
    The windows' first and last days cut the days into segments; the query groups by student,
    point and segment (count, sum, last day, newest id and a bitmask of the periods seen), and
    each window adds up its segments. Where a point has more entries than periods (a period
    recorded twice, which is rare), its entries are read again and valued one by one. The
    newest value is read by id, only for `Window.latest` points with more than one entry. The
    semesters the windows overlap let the database skip older years.
    """
    out: dict[tuple[date, date], dict[tuple[int, str], Aggregate]] = {w.span: {} for w in windows}
    windows = [w for w in windows if w.codes]
    if not windows or (students is not None and not students):
        return out
    postgres = session.get_bind().dialect.name == "postgresql"
    e = ScoreEntry
    codes = {c for w in windows for c in w.codes}
    replaced = {c for c in codes if replaces(catalogue.by_code[c])}
    semesters = sorted({k for w in windows for k in semesters_between(cal, w.start, w.end)})
    # Days first (cheap to compare), points after; the largest sets of points first.
    where = [e.revoked_at.is_(None), e.student_id.is_not(None), e.semester_key.in_(semesters),
             or_(*(and_(e.occurred_on >= start, e.occurred_on <= end, e.point_code.in_(sorted(points)))
                   for points, start, end in _reach(windows)))]
    if students is not None:
        where.append(in_ids(session, e.student_id, sorted(set(students))))
    cuts = sorted({w.start for w in windows} | {w.end + timedelta(days=1) for w in windows})
    # Segment n runs from cut n up to cut n + 1; no day read lies past the last cut.
    segment = case(*((e.occurred_on >= cut, n) for n, cut in reversed(list(enumerate(cuts[:-1], start=1)))),
                   else_=0)
    covering: dict[tuple[str, int], list[dict]] = {}
    sums: list[dict[tuple[int, str], list]] = [{} for _w in windows]
    session.flush()  # plain rows (no ORM loading for 100,000s of them): entries written first
    result = plain_rows(session, select(
        e.student_id, e.point_code, segment, func.count(), func.sum(e.value), func.max(e.occurred_on),
        func.max(e.id), _periods_seen(session, catalogue, replaced, codes - replaced))
        .where(*where).group_by(e.student_id, e.point_code, segment))
    for sid, code, seg, n, total, last_on, newest_id, seen in result:
        targets = covering.get((code, seg))
        if targets is None:
            first = cuts[seg - 1]
            targets = covering[(code, seg)] = [sums[k] for k, w in enumerate(windows)
                                               if code in w.codes and w.start <= first <= w.end]
        if not postgres:
            last_on = _as_date(last_on)
        for target in targets:
            acc = target.get((sid, code))
            if acc is None:
                target[(sid, code)] = [n, total, last_on, newest_id, seen]
            else:
                acc[0] += n
                acc[1] += total
                acc[2] = max(acc[2], last_on)
                acc[3] = max(acc[3], newest_id)
                acc[4] |= seen
    exact: set[tuple[int, str]] = set()
    newest: list[tuple[dict, tuple[int, str], Aggregate, int]] = []
    for w, found in zip(windows, sums, strict=True):
        for (sid, code), (n, total, last_on, newest_id, seen) in found.items():
            total = float(total)
            if code not in replaced:
                out[w.span][(sid, code)] = Aggregate(n, total, total / n, last_on)
            elif seen.bit_count() != n:
                exact.add((sid, code))
            elif n == 1 or code not in w.latest:
                out[w.span][(sid, code)] = Aggregate(n, total, total / n, last_on, total if n == 1 else None)
            else:
                newest.append((out[w.span], (sid, code), Aggregate(n, total, total / n, last_on), newest_id))
    values = _values_by_id(session, [i for *_rest, i in newest])
    for target, key, agg, newest_id in newest:
        target[key] = replace(agg, latest=values[newest_id])
    if exact:
        _exact_aggregates(session, windows, where, segment, exact, out)
    return out


def _reach(windows: Sequence[Window]) -> list[tuple[frozenset[str], date, date]]:
    """The (points, first day, last day) to read: windows with the same points, merged where
    their days touch (a trend's window and its baseline); the most points first."""
    spans: dict[frozenset[str], list[tuple[date, date]]] = defaultdict(list)
    for w in windows:
        spans[w.codes].append(w.span)
    out = []
    for points, found in spans.items():
        merged: list[list[date]] = []
        for start, end in sorted(found):
            if merged and start <= merged[-1][1] + timedelta(days=1):
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out += [(points, start, end) for start, end in merged]
    return sorted(out, key=lambda r: (-len(r[0]), r[1], sorted(r[0])))


def _periods_seen(session: Session, catalogue: Catalogue, codes: set[str], others: set[str]):  # noqa: ANN202
    """A bitmask of the periods a replaced point (`codes`) was recorded in: one bit per period.

    The week (01–53) or month (01–12) number ends a week or month key, the term (1, 2) a
    semester key; a year sets one bit. Two periods that share a bit (weeks a year apart) only
    make the periods look fewer: then the entries are read. PostgreSQL ORs the bits; SQLite has
    no bit_or, but the sum of the distinct bits is the same number. The other points read
    (`others`, most of the rows) are told apart first: 0.
    """
    if not codes:
        return literal_column("0")
    postgres = session.get_bind().dialect.name == "postgresql"
    unit = {c: UNIT_OF_PERIOD[catalogue.by_code[c].period] for c in codes}
    one = literal_column("1::bigint") if postgres else literal_column("1")
    zero = literal_column("0")
    key = ScoreEntry.period_key
    whens = [(ScoreEntry.point_code.in_(sorted(others)), zero)] if others else []
    for units, digits in ((("week", "month"), 2), (("semester",), 1)):
        chosen = sorted(c for c in codes if unit[c] in units)
        if chosen:
            tail = func.right(key, digits) if postgres else func.substr(key, -digits)
            whens.append((ScoreEntry.point_code.in_(chosen), one.op("<<")(cast(tail, Integer))))
    bit = case(*whens, else_=one)  # a year, or any other period: one bit
    return func.bit_or(bit) if postgres else func.sum(bit.distinct())


def _values_by_id(session: Session, ids: Sequence[int]) -> dict[int, float]:
    found: dict[int, float] = {}
    ids = sorted(set(ids))
    for start in range(0, len(ids), 900):
        found.update(session.execute(select(ScoreEntry.id, ScoreEntry.value)
                                     .where(in_ids(session, ScoreEntry.id, ids[start:start + 900]))).all())
    return found


def _exact_aggregates(session: Session, windows: Sequence[Window], where: list, segment: ColumnElement,
                      pairs: set[tuple[int, str]], out: dict[tuple[date, date], dict[tuple[int, str], Aggregate]],
                      ) -> None:
    """The pairs with a period recorded twice, from their entries: the newest of each period counts.

    Only the newest entry of each period and day segment is read (a window is a run of segments,
    so the newest of a period within a window is the newest of those), not every entry again.
    """
    by_student: dict[int, set[str]] = defaultdict(set)
    for sid, code in pairs:
        by_student[sid].add(code)
    students = sorted(by_student)
    e = ScoreEntry
    for chunk in chunks(students, CHUNK):
        codes = sorted({c for sid in chunk for c in by_student[sid]})
        newest = (select(func.max(e.id)).where(*where, in_ids(session, e.student_id, chunk), e.point_code.in_(codes))
                  .group_by(e.student_id, e.point_code, e.period_key, segment))
        entries: dict[tuple[int, str], list] = defaultdict(list)
        for r in session.execute(select(e.student_id, e.point_code, e.id, e.period_key, e.occurred_on, e.value)
                                 .where(e.id.in_(newest))):
            if r.point_code in by_student[r.student_id]:
                entries[(r.student_id, r.point_code)].append((r.id, r.period_key, _as_date(r.occurred_on), r.value))
        for key, rows in entries.items():
            for w in windows:
                if key[1] not in w.codes:
                    continue
                kept: dict[str, tuple] = {}
                for row in rows:
                    if w.start <= row[2] <= w.end and (row[1] not in kept or row[0] > kept[row[1]][0]):
                        kept[row[1]] = row
                if not kept:
                    continue
                total = float(sum(row[3] for row in kept.values()))
                newest_row = max(kept.values())
                out[w.span][key] = Aggregate(len(kept), total, total / len(kept),
                                             max(row[2] for row in kept.values()), float(newest_row[3]))


def _as_date(value: object) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def point_measure(point: ScorePoint) -> str:
    """Which measure of a window's aggregate is the point's value, as the card would read it."""
    if point.is_observation or (replaces(point) and UNIT_OF_PERIOD[point.period] in ("week", "month")):
        return "mean"
    return "sum" if point.accumulates else "latest"


def point_value(point: ScorePoint, agg: Aggregate) -> float | None:
    """The value of a point over a window as the card would read it."""
    return agg.measure(point_measure(point))

