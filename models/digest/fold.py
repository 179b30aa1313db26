"""The FOLD: a state (models/digest/state.py) merged with the entries recorded since it, the DELTA.

The digest for the week ending S takes the newest state P of the semester with C ≤ S − 7 and reads
the delta: live entries with id > P.max_entry_id or in P.pending (a primary-key range), in one
aggregate. The values as of S are P merged with the delta's entries dated ≤ S, those as of S − 7
P merged with the delta's entries dated ≤ S − 7, the new state P merged with those dated ≤ S and
created before I: counts and totals add, the larger id wins, new periods add. Where merging could
not be exact the (student, point) pair is valued from all its entries by models.card.point_value,
the card's own code: an entry of P revoked since P was built (revoked_at ≥ built_at − 1 h:
revoked_at is set before the commit; valuing too many pairs this way is harmless), or a delta
entry of a period P already has (a replacement, a late entry) or an earlier one. Without a state
(the first week of a semester: a week of entries; a changed catalogue or a lost state: the whole
semester, about ten times the weekly run at 15,000 students) the same merge starts from nothing:
every entry is the delta.

Sums are of floats, in SQL and Python, as the from-scratch sums were: values whose sums are exact
in binary floating point (integers, halves, quarters: what rates, scores and counts carry) give
the same point values whatever the path; others may differ in the last bit, as the SQL sums
already could from the card's.
"""

from __future__ import annotations

import threading
from array import array
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta

from sqlalchemy import Select, case, func, literal, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.card import MEAN, NEWEST, PERIODS, SUM, Entry, newest_per_period, point_value
from models.catalogue import Catalogue, ScorePoint
from models.db import plain_rows, tune_for_aggregates
from models.digest.state import CHUNK, SETTLE, Acc, Column, State, apply_changes, aware
from models.periods import Term
from models.schema import ScoreEntry

# The accumulators' kinds are the card's (models.card.value_kind): MEAN, SUM, NEWEST, PERIODS.


def live(term: Term) -> tuple:
    """The conditions of a semester's live entries of students."""
    return (ScoreEntry.revoked_at.is_(None), ScoreEntry.student_id.is_not(None),
            or_(ScoreEntry.semester_key == term.key, ScoreEntry.period_key == term.year))


class Fold:
    """One merge of a base state with the delta (see the module's docstring).

    `run` works out the changes per point: `into` (the accumulators of the new state: dated by
    the cutoff, created before the split; without a split, dated by the cutoff), `now` (dated by
    the cutoff, where entries created after the split make it differ from `into`) and `before`
    (dated by the cutoff before); None removes the pair. `apply` turns the base into the new state.
    """

    def __init__(self, session: Session, catalogue: Catalogue, kinds: dict[str, str], term: Term,
                 base: State, cutoff: date, before_cut: date | None, split: datetime | None,
                 monday: date | None) -> None:
        self.session, self.catalogue, self.kinds, self.term = session, catalogue, kinds, term
        self.base, self.cutoff, self.before_cut, self.split, self.monday = base, cutoff, before_cut, split, monday
        self.into: dict[str, dict[int, Acc | None]] = defaultdict(dict)
        self.now: dict[str, dict[int, Acc | None]] = defaultdict(dict)
        self.before: dict[str, dict[int, Acc | None]] = defaultdict(dict)
        self.week_done: dict[str, set[int]] = defaultdict(set)
        self.max_entry_id = base.max_entry_id
        self.pending: list[int] = []
        self._prefetched: _Prefetch | None = None

    def prefetch(self) -> None:
        """Start reading the delta on a connection of its own (PostgreSQL), so that the database
        aggregates it while this thread decodes the base's record; `run` then takes its rows."""
        if self.session.get_bind().dialect.name == "postgresql":
            self._prefetched = _Prefetch(self.session.get_bind(), self._delta_query())

    def _in_delta(self):  # noqa: ANN202 - a SQL condition
        e = ScoreEntry
        if self.base.pending:
            return or_(e.id > self.base.max_entry_id, e.id.in_(self.base.pending))
        return e.id > self.base.max_entry_id

    def run(self) -> None:
        """Read the delta, merge it, value the rest exactly, and note what the new state leaves out.

        The base's columns become the new state's as the rows come (its values before are kept for
        `before_values`); new pairs, removals and exactly valued pairs go through `into`.
        """
        exact = self._revoked_pairs()
        kinds, week_done = self.kinds, self.week_done
        columns = {code: self._column(code) for code in kinds}
        self.base_values = {code: (array("i", col.sid), array("d", col.value), col.index())
                            for code, col in columns.items()}
        into = {code: self.into[code] for code in kinds}
        indexes = {code: col.index() for code, col in columns.items()}
        # Newest and period_mean pairs come a row per period: each row is folded into the pair's
        # partial (count, total, largest id, first and last period key) into the state, and, for a
        # pair with entries created after the split, as of the cutoff; merged at the end. A group of
        # two or more entries (a replacement) waits for its newest entry's value.
        partials: tuple[dict, dict, dict] = ({}, {}, {})
        into_partial = partials[0]
        waiting: list[tuple] = []
        first_out: int | None = None
        for sid, code, key, n, s, last, n_late, s_late, last_late, n_before, s_before, last_before, week, out \
                in self._read_delta():
            kind = kinds.get(code)
            if kind is None:  # a point no longer in the catalogue
                continue
            # Dated by the cutoff: into the state, and created after the split.
            if n_late:
                n_dated, s_dated, last_dated = n + n_late, (s if n else 0.0) + s_late, max(last or 0, last_late)
            else:
                n_dated, s_dated, last_dated = n, s, last
            if week is None:
                week = n_dated - n_before
            if week:
                week_done[code].add(sid)
            if out is not None and (first_out is None or out < first_out):
                first_out = out
            if exact and (sid, code) in exact:
                continue
            if kind == PERIODS and n == 1 and n_dated == 1 and n_before < 2:  # the common row: one entry
                pair = (sid, code)
                acc = into_partial.get(pair)
                if acc is None:  # as _fold does, inline
                    into_partial[pair] = [1, s, last, key, key]
                else:
                    acc[0] += 1
                    acc[1] += s
                    acc[2] = max(acc[2], last)
                    acc[3], acc[4] = min(acc[3], key), max(acc[4], key)
                if pair in partials[1]:
                    _fold(partials[1], kind, pair, key, 1, s, last)
                if n_before:
                    _fold(partials[2], kind, pair, key, 1, s, last)
                continue
            if kind not in (MEAN, SUM):
                row = (sid, code, key, n, s, last, n_dated, s_dated, last_dated, n_before, s_before, last_before)
                if n > 1 or n_dated > 1 or n_before > 1:
                    waiting.append(row)
                else:
                    self._fold_row(partials, kind, row, s, s_dated, s_before)
                continue
            # Mean, sum: one row per pair, merged here (as _merge does, inline: most rows are these).
            col = columns[code]
            i = indexes[code].get(sid)
            n0, total0, last0 = (0, 0.0, 0) if i is None else (col.n[i], col.total[i], col.last[i])
            if n:
                total = total0 + s
                value = total / (n0 + n) if kind == MEAN else total
                if i is None:
                    into[code][sid] = (n, total, value, last, "")
                else:
                    col.n[i], col.total[i], col.value[i], col.last[i] = n0 + n, total, value, max(last0, last)
            if n_dated > n:
                total = total0 + s_dated
                self.now[code][sid] = (n0 + n_dated, total, total / (n0 + n_dated) if kind == MEAN else total,
                                       max(last0, last_dated), "")
            if n_before:
                total = total0 + s_before
                self.before[code][sid] = (n0 + n_before, total, total / (n0 + n_before) if kind == MEAN else total,
                                          max(last0, last_before), "")
        newest = self._newest_values(waiting)
        for row in waiting:
            n, s, n_dated, s_dated, n_before, s_before = row[3], row[4], row[6], row[7], row[9], row[10]
            self._fold_row(partials, kinds[row[1]], row, newest[row[5]] if n > 1 else s,
                           newest[row[8]] if n_dated > 1 else s_dated, newest[row[11]] if n_before > 1 else s_before)
        self._merge_partials(partials, exact)
        if exact:
            self._value_exactly(exact)
        if self.split is not None:
            self._mark_pending(first_out)

    def _fold_row(self, partials: tuple[dict, dict, dict], kind: str, row: tuple, value: float, value_dated: float,
                  value_before: float) -> None:
        """Fold a row of a newest or period_mean pair into its partials (values: of the newest entries)."""
        sid, code, key, n, _s, last, n_dated, _sd, last_dated, n_before, _sb, last_before = row[:12]
        pair = (sid, code)
        if n_dated > n and pair not in partials[1]:  # entries created after the split: now differs
            partials[1][pair] = list(partials[0][pair]) if pair in partials[0] else None
        if n:
            _fold(partials[0], kind, pair, key, n, value, last)
        if pair in partials[1]:
            _fold(partials[1], kind, pair, key, n_dated, value_dated, last_dated)
        if n_before:
            _fold(partials[2], kind, pair, key, n_before, value_before, last_before)

    def _merge_partials(self, partials: tuple[dict, dict, dict], exact: set[tuple[int, str]]) -> None:
        """Merge the newest and period_mean partials with the base (into the columns where it has the pair)."""
        into, now, before = partials
        columns, kinds = self.base.columns, self.kinds
        indexes = {code: col.index() for code, col in columns.items()}
        for pair, part in into.items():
            if pair in exact:
                continue
            sid, code = pair
            col = columns[code]
            i = indexes[code].get(sid)
            if i is not None and pair not in now and pair not in before and kinds[code] == PERIODS \
                    and part[3] > col.key[i]:  # the common pair: new periods only; as _merge does, inline
                n, total = col.n[i] + part[0], col.total[i] + part[1]
                col.n[i], col.total[i], col.value[i], col.last[i], col.key[i] = \
                    n, total, total / n, max(col.last[i], part[2]), part[4]
                continue
            base = None if i is None else col.acc(i)
            if pair not in now and pair not in before:
                merged = [_merge(kinds[code], base, *part)]
            else:
                merged = [_merge(kinds[code], base, *p) if p else base
                          for p in (part, now.get(pair), before.get(pair))]
            if False in merged:
                exact.add((sid, code))
                continue
            if i is None:
                self.into[code][sid] = merged[0]
            else:
                col.n[i], col.total[i], col.value[i], col.last[i], col.key[i] = merged[0]
            if pair in now:
                self.now[code][sid] = merged[1]
            if pair in before:
                self.before[code][sid] = merged[2]
        for changes, partial in ((self.now, now), (self.before, before)):
            for (sid, code), part in partial.items():  # pairs without entries into the state
                if (sid, code) in into or (sid, code) in exact or part is None:
                    continue
                col = self.base.columns[code]
                i = col.index().get(sid)
                merged = _merge(self.kinds[code], None if i is None else col.acc(i), *part)
                if merged is False:
                    exact.add((sid, code))
                else:
                    changes[code][sid] = merged

    def _delta_query(self) -> Select:
        """The delta aggregated per student, point and (period_mean points) period: one query.

        Per row: the count, total and largest id into the new state (dated by the cutoff and, with a
        split, created before it), dated by the cutoff but created after the split (else zero), and
        dated by the cutoff before (else zero); whether it has entries dated in the week (data
        entry; None: the counts tell); the first id left out of the new state.
        """
        e = ScoreEntry
        periodic = sorted(c for c, k in self.kinds.items() if k == PERIODS)
        pk = case((e.point_code.in_(periodic), e.period_key), else_=literal("")) if periodic else literal("")
        dated = e.occurred_on <= self.cutoff
        into = dated & (e.created_at < self.split) if self.split is not None else dated
        columns = []
        # The filters' aggregates cost where they hold: into the state holds for nearly every row,
        # created after the split and dated by the cutoff before for few.
        late = dated & (e.created_at >= self.split) if self.split is not None else None
        for f in (into, late, e.occurred_on <= self.before_cut if self.before_cut is not None else None):
            if f is None:
                columns += [literal(0), literal(None), literal(None)]
            else:
                columns += [func.count().filter(f), func.sum(e.value).filter(f), func.max(e.id).filter(f)]
        if self.monday is not None and self.before_cut == self.monday - timedelta(days=1):
            columns.append(literal(None))  # in the week: dated by the cutoff, not by the one before
        else:
            columns.append(func.count().filter(dated & (e.occurred_on >= (self.monday or date.max))))
        columns.append(func.min(e.id).filter(~into) if self.split is not None else literal(None))
        return (select(e.student_id, e.point_code, pk, *columns).where(self._in_delta(), *live(self.term))
                .group_by(e.student_id, e.point_code, pk))

    def _read_delta(self) -> Iterator[tuple]:
        """The delta's rows (see `_delta_query`), from the prefetch if one was started."""
        if self._prefetched is not None:
            yield from self._prefetched.rows()
            return
        # From nothing, every (student, point, period) of the semester is a group: hashed in memory.
        cold = self.base.max_entry_id == 0 and not self.base.pending
        yield from plain_rows(self.session, self._delta_query(), "256MB" if cold else None)

    def _newest_values(self, waiting: list[tuple]) -> dict[int, float]:
        """The value of each newest entry of a group of two or more, by id."""
        ids = sorted({row[i] for row in waiting for i in (5, 8, 11) if row[i - 2] and row[i - 2] > 1})
        found: dict[int, float] = {}
        for start in range(0, len(ids), CHUNK):
            found.update(self.session.execute(select(ScoreEntry.id, ScoreEntry.value)
                                              .where(ScoreEntry.id.in_(ids[start:start + CHUNK]))).all())
        return found

    def _revoked_pairs(self) -> set[tuple[int, str]]:
        """Pairs with an entry of the base state revoked since it was built."""
        if self.base.built_at is None:
            return set()
        e = ScoreEntry
        rows = self.session.execute(
            select(e.student_id, e.point_code).distinct()
            .where(e.revoked_at.is_not(None), e.revoked_at >= self.base.built_at - SETTLE,
                   e.id <= self.base.max_entry_id, e.student_id.is_not(None), e.point_code.in_(list(self.kinds))))
        return {(sid, code) for sid, code in rows}

    def _value_exactly(self, pairs: set[tuple[int, str]]) -> None:
        """Value pairs from all their entries with the card's own code, at each cutoff and for the state."""
        by_student: dict[int, set[str]] = defaultdict(set)
        for sid, code in pairs:
            by_student[sid].add(code)
        students = sorted(by_student)
        e = ScoreEntry
        grouped: dict[tuple[int, str], list[tuple[Entry, datetime]]] = defaultdict(list)
        for start in range(0, len(students), CHUNK):
            chunk = students[start:start + CHUNK]
            codes = sorted({c for sid in chunk for c in by_student[sid]})
            for r in self.session.execute(
                    select(e.id, e.point_code, e.period_key, e.occurred_on, e.value, e.student_id, e.created_at)
                    .where(*live(self.term), e.occurred_on <= self.cutoff, e.student_id.in_(chunk),
                           e.point_code.in_(codes))):
                if r.point_code in by_student[r.student_id]:
                    grouped[(r.student_id, r.point_code)].append(
                        (Entry(r.id, r.point_code, r.period_key, r.occurred_on, r.value), aware(r.created_at)))
        for sid, code in pairs:
            kind, point = self.kinds[code], self.catalogue.by_code[code]
            found = grouped.get((sid, code), [])
            entries = [en for en, _at in found]
            kept = entries if self.split is None else [en for en, at in found if at < self.split]
            self.into[code][sid] = _accumulate(kind, point, kept)
            if len(kept) != len(entries):
                self.now[code][sid] = _accumulate(kind, point, entries)
            if self.before_cut is not None:
                cut = self.before_cut
                self.before[code][sid] = _accumulate(kind, point, [en for en in entries if en.occurred_on <= cut])

    def _mark_pending(self, first_out: int | None) -> None:
        """The new state's max_entry_id (the last id created before the split) and the ids up to it
        that it leaves out (created after the split, or dated after the cutoff)."""
        e = ScoreEntry
        last = self.session.scalar(select(e.id).where(e.id > self.base.max_entry_id, e.created_at < self.split)
                                   .order_by(e.id.desc()).limit(1))
        self.max_entry_id = max(self.max_entry_id, last or 0)
        if first_out is None or first_out > self.max_entry_id:
            return
        into = (e.occurred_on <= self.cutoff) & (e.created_at < self.split)
        self.pending = sorted(self.session.scalars(
            select(e.id).where(self._in_delta(), e.id >= first_out, e.id <= self.max_entry_id, *live(self.term),
                               e.point_code.in_(list(self.kinds)), ~into)))

    # The results.

    def before_values(self) -> dict[str, tuple[array, array]]:
        """(student ids, values) per point as of the cutoff before (the base's, changed by the delta)."""
        out = {}
        for code, (sids, values, index) in self.base_values.items():
            out[code] = _patched(sids, values, index, self.before.get(code))
        return out

    def apply(self) -> None:
        """Finish turning the base into the new state: new pairs, removals and exactly valued pairs."""
        for code, changes in self.into.items():
            if changes:
                self._column(code).update(changes)

    def now_values(self) -> dict[str, tuple[array, array]]:
        """(student ids, values) per point as of the cutoff; call after `apply`."""
        return {code: _patched(col.sid, col.value, col.index(), self.now.get(code))
                for code, col in self.base.columns.items()}

    def _column(self, code: str) -> Column:
        col = self.base.columns.get(code)
        if col is None:
            col = self.base.columns[code] = Column()
        return col


def _fold(partial: dict, kind: str, pair: tuple[int, str], key: str, n: int, value: float, last: int) -> None:
    """Fold a group (a period of a period_mean pair; a newest pair's entries) into a partial."""
    if not n:
        return
    acc = partial.get(pair)
    if kind == NEWEST:
        if acc is None or last > acc[2]:
            partial[pair] = [n + (acc[0] if acc else 0), value, last, "", ""]
        else:
            acc[0] += n
    elif acc is None:
        partial[pair] = [1, value, last, key, key]
    else:
        acc[0] += 1
        acc[1] += value
        acc[2] = max(acc[2], last)
        acc[3], acc[4] = min(acc[3], key), max(acc[4], key)


def _patched(sids: array, values: array, index: dict[int, int],
             changes: dict[int, Acc | None] | None) -> tuple[array, array]:
    """(student ids, values) with `changes` applied to a copy (None removes a student)."""
    if not changes:
        return sids, values
    sids, values = apply_changes([array("i", sids), array("d", values)], (None, 2), index, changes)
    return sids, values


class _Prefetch:
    """A week's delta read on a connection of its own, on a thread, while the caller goes on.

    Its snapshot is a moment apart from the caller's: harmless here, because what it reads is fixed by
    the state's header (entries after its max_entry_id, and its pending ones), every entry up to the
    new state's split committed an hour or more before (SETTLE), and a pair revoked in between is
    valued again from its entries on the caller's connection.
    """

    def __init__(self, engine: Engine, query: Select) -> None:
        self._result: list[tuple] | BaseException = []
        self._thread = threading.Thread(target=self._read, args=(engine, query), name="digest-delta", daemon=True)
        self._thread.start()

    def _read(self, engine: Engine, query: Select) -> None:
        try:
            with Session(engine) as session:  # its own connection, settings and snapshot
                tune_for_aggregates(session)
                self._result = list(plain_rows(session, query))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in rows()
            self._result = exc

    def rows(self) -> list[tuple]:
        """The delta's rows, once read (its error, raised here)."""
        self._thread.join()
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result


def _merge(kind: str, base: Acc | None, n: int, total: float, last: int, low: str, high: str) -> Acc | bool:
    """A pair's accumulator with the delta's (count, total, largest id, first and last period key) for
    it; False where merging cannot be exact (a period_mean pair gets a period it has, or an earlier one)."""
    if base is None:
        if kind == MEAN:
            return n, total, total / n, last, ""
        return n, total, total / n if kind == PERIODS else total, last, high
    n0, total0, _value, last0, key0 = base
    if kind in (MEAN, SUM):
        n, total = n0 + n, total0 + total
        return n, total, total / n if kind == MEAN else total, max(last0, last), ""
    if kind == NEWEST:  # the larger id wins (a pending entry may be older than the base's newest)
        return (n0 + n, total, total, last, "") if last > last0 else (n0 + n, total0, total0, last0, "")
    if low <= key0:
        return False
    n, total = n0 + n, total0 + total
    return n, total, total / n, max(last0, last), high


def _accumulate(kind: str, point: ScorePoint, entries: list[Entry]) -> Acc | None:
    """A pair's accumulator from its entries, its value by models.card.point_value."""
    pv = point_value(point, entries)
    if pv is None:
        return None
    if kind in (MEAN, SUM):
        return len(entries), float(sum(en.value for en in entries)), pv.value, max(en.id for en in entries), ""
    if kind == NEWEST:
        newest = max(entries, key=lambda en: en.id)
        return len(entries), newest.value, pv.value, newest.id, ""
    latest = newest_per_period(entries)
    total = 0.0
    for key in sorted(latest):
        total += latest[key].value
    return len(latest), total, pv.value, max(en.id for en in entries), max(latest)
