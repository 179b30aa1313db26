"""Every student's card scores at the digest's two cutoffs, kept incrementally from week to week.

The digest reports each domain's mean over students of the card's subtotals as of the week's
Sunday S and as of the Sunday before (S − 7), so it needs every student's semester-to-date point
values at both. Computing them from every entry of the semester is one GROUP BY over millions of
rows; instead the weekly job keeps a STATE (table digest_state) as of a finished week and the next
week's digest reads only the entries that came after it.

The state as of Sunday C holds, for every (student, point) of the semester, the accumulators of
the live entries with occurred_on ≤ C and created_at < I, I being the Monday 00:00 (APP_TIMEZONE)
after C: a count and a total (每次课前 means, counts), the newest value and its id (points whose
newest value counts), the number of periods, the total of each period's newest value and the
last period (周末 and 月末 points); and every student's card scores from those values.
`max_entry_id` is the largest id of an entry created before I, `pending` the ids up to it of
entries not in the state (created at or after I, dated after C: rare). It is built no sooner than
an hour after I, so every transaction that wrote an entry created before I has committed: no
entry up to max_entry_id can still appear. `built_at` is when its reading began.

The digest for the week ending S takes the newest state P of the semester with C ≤ S − 7 and reads
the DELTA: live entries with id > P.max_entry_id or in P.pending (a primary-key range), in one
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

The card formula then runs point by point over every student at once (CardMath), with the float
operations of models/card.py in the same order, so the scores are those of the cards: for every
student as of S, and as of S − 7 only for those the delta changed there (the others keep P's).

In the first week of a semester the values before are those at the end of the previous semester:
merged the same way from that semester's last state, which is kept (with the newest of the current
semester and the one a week older). Only the weekly job persists a state (`persist`); 本周概况 reads
the newest one and writes none.
Sums are of floats, in SQL and Python, as the from-scratch sums were: values whose sums are exact
in binary floating point (integers, halves, quarters: what rates, scores and counts carry) give
the same point values whatever the path; others may differ in the last bit, as the SQL sums
already could from the card's.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import threading
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from math import isnan, nan

import numpy as np
from sqlalchemy import Select, case, delete, func, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.card import Entry, point_value
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.db import plain_rows, tune_for_aggregates
from models.periods import UNIT_OF_PERIOD, Term
from models.schema import DigestState, ScoreEntry, utcnow

FORMAT = 3  # of DigestState.data; a state of another format is ignored (and replaced)
SETTLE = timedelta(hours=1)  # how long after I a state may be built; the margin on revoked_at
CHUNK = 900  # ids or students per IN list (SQLite allows 999 parameters)

MEAN, SUM, NEWEST, PERIODS = "mean", "sum", "newest", "period_mean"
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def kind_of(point: ScorePoint) -> str:
    """How a point's semester value is made (mirrors models.card.point_value)."""
    if point.is_observation:
        return MEAN
    if point.accumulates:
        return SUM
    if UNIT_OF_PERIOD[point.period] in ("week", "month"):
        return PERIODS  # the mean over periods of each period's newest value
    return NEWEST  # the newest value of all


def fingerprint(catalogue: Catalogue) -> str:
    """Everything a state depends on: the individual points (how values are made, how they score)
    and the domain weights; a state made with another catalogue is not used."""
    text = repr((FORMAT, catalogue.individual(), sorted(catalogue.formula.domain_weights.items())))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ── the state, one column of accumulators per point ──────────────────────────

# A pair's accumulator: (n, total, value, last id, last period key). n and total: count and sum
# (mean, sum), periods and the sum of their newest values (period_mean); value: the point value;
# last id: of the newest entry (newest); last period key (period_mean; "" otherwise).
Acc = tuple[int, float, float, int, str]


class Column:
    """One point's accumulators for every student who has it, as parallel arrays."""

    __slots__ = ("sid", "n", "total", "value", "last", "key", "_index")

    def __init__(self) -> None:
        self.sid, self.n, self.total = array("i"), array("i"), array("d")
        self.value, self.last, self.key = array("d"), array("q"), []
        self._index: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.sid)

    def index(self) -> dict[int, int]:
        """Student id → position (kept until the column changes shape)."""
        if self._index is None:
            self._index = dict(zip(self.sid, range(len(self.sid)), strict=True))
        return self._index

    def acc(self, i: int) -> Acc:
        return self.n[i], self.total[i], self.value[i], self.last[i], self.key[i]

    def update(self, changes: dict[int, Acc | None]) -> None:
        """Set, add or (None) remove students' accumulators."""
        (self.sid, self.n, self.total, self.value, self.last, self.key) = _apply_changes(
            [self.sid, self.n, self.total, self.value, self.last, self.key], (None, 0, 1, 2, 3, 4),
            self.index(), changes)
        self._index = None


@dataclass
class State:
    """Accumulators per point and student as of `cutoff` (see the module's docstring)."""

    semester_key: str
    cutoff: date
    max_entry_id: int = 0
    pending: list[int] = field(default_factory=list)
    built_at: datetime | None = None
    columns: dict[str, Column] = field(default_factory=dict)
    scores: dict[int, Scores] = field(default_factory=dict)  # the card's, from these values

    @property
    def pairs(self) -> int:
        return sum(len(c) for c in self.columns.values())


def _little(a: array) -> array:
    if sys.byteorder != "little":
        a = array(a.typecode, a)
        a.byteswap()
    return a


def encode(state: State) -> bytes:
    """The columns and scores as one record: a JSON header (points, lengths, period keys),
    then the arrays, little-endian (scores: student ids, then subtotals and total each, NaN for None)."""
    codes = sorted(c for c, col in state.columns.items() if len(col))
    keys = sorted({k for c in codes for k in state.columns[c].key})
    key_ix = {k: i for i, k in enumerate(keys)}
    parts = []
    for code in codes:
        col = state.columns[code]
        parts += [col.sid, col.n, col.total, col.value, col.last, array("H", map(key_ix.__getitem__, col.key))]
    scored = sorted(state.scores)
    parts += [array("i", scored), array("d", [nan if x is None else x for sid in scored
                                              for x in (*state.scores[sid].subtotals, state.scores[sid].total)])]
    header = json.dumps({"format": FORMAT, "columns": [[c, len(state.columns[c])] for c in codes],
                         "keys": keys, "scores": len(scored)}).encode("utf-8")
    body = b"".join(_little(a).tobytes() for a in parts)
    # Not compressed: compressing 5 MB costs more here than writing it (PostgreSQL stores it as is).
    return struct.pack("<I", len(header)) + header + body


def decode(data: bytes, state: State) -> State | None:
    """Fill `state` from `encode`'s record (None: another format)."""
    raw = memoryview(data)
    (size,) = struct.unpack_from("<I", raw)
    header = json.loads(bytes(raw[4:4 + size]))
    if header.get("format") != FORMAT:
        return None
    offset = 4 + size
    keys = header["keys"]
    for code, length in header["columns"]:
        col = Column()
        for name in ("sid", "n", "total", "value", "last"):
            a = getattr(col, name)
            a.frombytes(raw[offset:offset + length * a.itemsize])
            offset += length * a.itemsize
            if sys.byteorder != "little":
                a.byteswap()
        ix = array("H")
        ix.frombytes(raw[offset:offset + length * ix.itemsize])
        offset += length * ix.itemsize
        if sys.byteorder != "little":
            ix.byteswap()
        col.key = [keys[i] for i in ix]
        state.columns[code] = col
    width = len(DOMAINS) + 1
    scored, flat = array("i"), array("d")
    for a, length in ((scored, header["scores"]), (flat, header["scores"] * width)):
        a.frombytes(raw[offset:offset + length * a.itemsize])
        offset += length * a.itemsize
        if sys.byteorder != "little":
            a.byteswap()
    for i, sid in enumerate(scored):
        row = [None if isnan(x) else x for x in flat[i * width:(i + 1) * width]]
        state.scores[sid] = Scores(tuple(row[:-1]), row[-1])
    return state


def load_state(session: Session, catalogue: Catalogue, term: Term, latest: date) -> State | None:
    """The newest usable state of the semester as of `latest` or before (None: none)."""
    found = state_header(session, catalogue, term, latest)
    return None if found is None else load_record(session, *found)


def state_header(session: Session, catalogue: Catalogue, term: Term, latest: date) -> tuple[State, int] | None:
    """The newest usable state's header (what its delta is read from) and row id, without its record."""
    row = session.execute(
        select(DigestState.id, DigestState.semester_key, DigestState.cutoff, DigestState.max_entry_id,
               DigestState.pending, DigestState.built_at)
        .where(DigestState.semester_key == term.key, DigestState.cutoff <= latest,
               DigestState.catalogue == fingerprint(catalogue))
        .order_by(DigestState.cutoff.desc()).limit(1)).one_or_none()
    if row is None:
        return None
    return State(row.semester_key, row.cutoff, row.max_entry_id, [int(i) for i in row.pending.split(",") if i],
                 _aware(row.built_at)), row.id


def load_record(session: Session, state: State, row_id: int) -> State | None:
    """Fill a header's state from its record (None: a record of another format)."""
    data = session.scalar(select(DigestState.data).where(DigestState.id == row_id))
    return decode(data, state)


def save_state(session: Session, catalogue: Catalogue, state: State) -> bool:
    """Persist `state` unless its week already has one (a rerun, a concurrent run); drop older states.

    True when this call wrote it. One `INSERT … ON CONFLICT DO NOTHING RETURNING`: against a
    concurrent run of the same week the unique constraint decides (on PostgreSQL the insert waits
    for the other transaction), nothing is written twice, and the caller's transaction goes on
    with its own, identical, numbers.
    """
    newest = session.scalar(select(func.max(DigestState.cutoff)))
    if newest is not None and newest >= state.cutoff:
        return False  # this week's is there already, or a later one: nothing to add
    insert = _INSERTS[session.get_bind().dialect.name]
    written = session.scalar(
        insert(DigestState)
        .values(semester_key=state.semester_key, cutoff=state.cutoff, max_entry_id=state.max_entry_id,
                pending=",".join(map(str, state.pending)), built_at=state.built_at,
                catalogue=fingerprint(catalogue), pairs=state.pairs, data=encode(state))
        .on_conflict_do_nothing(index_elements=["semester_key", "cutoff"])
        .returning(DigestState.id))
    if written is None:
        return False
    # The state a week older stays for 本周概况 later this week (it needs the week before too); of
    # the semesters before, the newest state stays: the first weeks of a semester compare with the
    # end of the one before, merged from it.
    session.execute(delete(DigestState).where(DigestState.semester_key == state.semester_key,
                                              DigestState.cutoff < state.cutoff - timedelta(days=7)))
    earlier = DigestState.__table__.alias("earlier")
    session.execute(delete(DigestState).where(
        DigestState.semester_key != state.semester_key,
        select(earlier.c.id).where(earlier.c.semester_key != state.semester_key,
                                   earlier.c.cutoff > DigestState.cutoff).exists()))
    return True


# ── the card formula, point by point for every student at once ───────────────

@dataclass(frozen=True)
class Scores:
    """One student's card numbers: subtotals by domain and total (None where nothing counts)."""

    subtotals: tuple[float | None, ...]
    total: float | None


EMPTY = Scores((None,) * len(DOMAINS), None)


class CardMath:
    """The card formula of models/card.py over point values, with the same float operations.

    `build_card` adds up each domain's recorded points in catalogue order for one student; this
    goes through the catalogue once, adding each point's weighted card points to every student's
    running sums of its domain, so every student's sums see the same additions in the same order.
    The card points of a (point, value) are computed once.
    """

    def __init__(self, catalogue: Catalogue) -> None:
        self.points = [(p.code, DOMAINS.index(p.domain), p, p.weight) for p in catalogue.individual()]
        self.domain_weights = [catalogue.formula.domain_weights.get(d, 0.0) for d in DOMAINS]

    def scores(self, columns: dict[str, tuple[array, array]],
               students: set[int] | None = None) -> dict[int, Scores]:
        """Every student's scores (or only those of `students`) from (student ids, values) per point.

        Columnwise with numpy: each element is the same IEEE operation as the card's, in the same
        order (one addition per point, in catalogue order); rounding is Python's, as the card's.
        """
        arrays = {code: (_ints(sids), _floats(values)) for code, (sids, values) in columns.items()}
        if students is not None:
            wanted = np.fromiter(students, dtype=np.int64, count=len(students))
            arrays = {code: (sids[mask], values[mask]) for code, (sids, values) in arrays.items()
                      for mask in (np.isin(sids, wanted),)}
        arrays = {code: pair for code, pair in arrays.items() if len(pair[0])}
        if not arrays:
            return {}
        present = np.unique(np.concatenate([sids for sids, _values in arrays.values()]))
        size = int(present[-1]) + 1
        weighted = np.zeros((len(DOMAINS), size))
        weights = np.zeros((len(DOMAINS), size))
        for code, d, point, weight in self.points:
            if code not in arrays:
                continue
            sids, values = arrays[code]
            distinct, which = np.unique(values, return_inverse=True)
            points = np.array([point.card_points(v) * weight for v in distinct.tolist()])
            weighted[d, sids] += points[which]  # a student is once in a column
            weights[d, sids] += weight
        sums, counts = weighted[:, present], weights[:, present]
        with np.errstate(divide="ignore", invalid="ignore"):
            means = (sums / counts).tolist()
        recorded = (counts != 0).tolist()
        per_domain = [[round(m, 1) if r else None for m, r in zip(ms, rs, strict=True)]
                      for ms, rs in zip(means, recorded, strict=True)]
        domain_weights = self.domain_weights
        out = {}
        for sid, subtotals in zip(present.tolist(), zip(*per_domain, strict=True), strict=True):
            # sum() over the present domains, as models.card._total adds them (from 0, in order)
            num = denom = 0
            for s, w in zip(subtotals, domain_weights, strict=True):
                if s is not None:
                    num += s * w
                    denom += w
            out[sid] = Scores(subtotals, round(num / denom, 1) if denom else None)
        return out


def _ints(a: array | np.ndarray) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else np.frombuffer(a, dtype=np.intc) if len(a) else np.zeros(0, np.intc)


def _floats(a: array | np.ndarray) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0)


# ── the values at the two cutoffs ────────────────────────────────────────────

@dataclass
class Standing:
    """Every student's card scores at the week's Sunday and the Sunday before, and the week's data entry."""

    now: dict[int, Scores]
    before: dict[int, Scores]
    week_done: dict[str, set[int]]  # point code → students with an entry dated in the week
    from_state: date | None = None  # the cutoff of the state the values were merged from
    before_from_state: date | None = None  # the same for the values before, when of another semester


def _live(term: Term):  # noqa: ANN202 - SQL conditions
    return (ScoreEntry.revoked_at.is_(None), ScoreEntry.student_id.is_not(None),
            or_(ScoreEntry.semester_key == term.key, ScoreEntry.period_key == term.year))


def _split_instant(sunday: date, zone) -> datetime:  # noqa: ANN001 - a tzinfo
    """I: the Monday 00:00 after `sunday`, local time, in UTC (SQLite compares datetimes as UTC text)."""
    return datetime.combine(sunday + timedelta(days=1), time(0), zone).astimezone(UTC)


def _aware(at: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def standing(session: Session, catalogue: Catalogue, term: Term, sunday: date, monday: date,
             previous: tuple[Term, date], zone, *, persist: bool) -> Standing:  # noqa: ANN001 - a tzinfo
    """Card scores as of `sunday` and as of `previous` (its term and day: the Sunday before, or the
    end of the previous semester), merged from the newest state; a new state too when `persist`."""
    return begin_standing(session, catalogue, term, sunday, monday, previous, zone, persist=persist)()


def begin_standing(session: Session, catalogue: Catalogue, term: Term, sunday: date, monday: date,
                   previous: tuple[Term, date], zone, *,  # noqa: ANN001 - a tzinfo
                   persist: bool) -> Callable[[], Standing]:
    """`standing` in two steps: this finds the state and (PostgreSQL) starts reading the week's delta
    on a connection of its own; the function it returns does the rest. In between the caller may
    use the session for its other queries while the database aggregates the delta."""
    tune_for_aggregates(session)
    math = CardMath(catalogue)
    kinds = {p.code: kind_of(p) for p in catalogue.individual()}
    prev_term, prev_day = previous
    same_term = prev_term.key == term.key
    header = state_header(session, catalogue, term, prev_day) if same_term else None
    split = _split_instant(sunday, zone)
    started = utcnow()
    build = persist and started >= split + SETTLE
    fold = _Fold(session, catalogue, kinds, term, header[0] if header else State(term.key, term.start),
                 sunday, prev_day if same_term else None, split if build else None, monday)
    base = None
    if header is not None:
        fold.prefetch()  # PostgreSQL: the week's delta on a second connection, meanwhile the record
        base = load_record(session, *header)
        if base is None:
            fold = _Fold(session, catalogue, kinds, term, State(term.key, term.start), sunday, prev_day,
                         split if build else None, monday)
    return lambda: _finish(session, math, kinds, term, sunday, previous, base, fold, started, build)


def _finish(session: Session, math: CardMath, kinds: dict[str, str], term: Term, sunday: date,
            previous: tuple[Term, date], base: State | None, fold: _Fold, started: datetime,
            build: bool) -> Standing:
    """The rest of `standing` (see begin_standing)."""
    catalogue = fold.catalogue
    prev_term, prev_day = previous
    same_term = prev_term.key == term.key
    last = None
    fold.run()
    if same_term and base is not None:
        # The base's own scores, but for the students whose values before the delta changed.
        changed = {sid for per in fold.before.values() for sid in per}
        before = {sid: sc for sid, sc in base.scores.items() if sid not in changed}
        before.update(math.scores(fold.before_values(), changed))
    elif same_term:
        before = math.scores(fold.before_values())
    else:  # the first week of a semester: against the end of the previous one, from its last state
        found = state_header(session, catalogue, prev_term, prev_day)
        last = load_record(session, *found) if found else None
        earlier = _Fold(session, catalogue, kinds, prev_term, last or State(prev_term.key, prev_term.start),
                        prev_day, None, None, None)
        earlier.run()
        earlier.apply()
        before = math.scores(earlier.now_values())
    fold.apply()
    now = math.scores(fold.now_values())
    if build:
        # The scores of now, but for the students with entries created after the split.
        late = {sid for per in fold.now.values() for sid in per}
        scores = {sid: sc for sid, sc in now.items() if sid not in late}
        scores.update(math.scores({c: (col.sid, col.value) for c, col in fold.base.columns.items()}, late))
        state = State(term.key, sunday, fold.max_entry_id, fold.pending, started, fold.base.columns, scores)
        save_state(session, catalogue, state)
    return Standing(now, before, fold.week_done, base.cutoff if base else None, last.cutoff if last else None)


class _Fold:
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
        return (select(e.student_id, e.point_code, pk, *columns).where(self._in_delta(), *_live(self.term))
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
                    .where(*_live(self.term), e.occurred_on <= self.cutoff, e.student_id.in_(chunk),
                           e.point_code.in_(codes))):
                if r.point_code in by_student[r.student_id]:
                    grouped[(r.student_id, r.point_code)].append(
                        (Entry(r.id, r.point_code, r.period_key, r.occurred_on, r.value), _aware(r.created_at)))
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
            select(e.id).where(self._in_delta(), e.id >= first_out, e.id <= self.max_entry_id, *_live(self.term),
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
    sids, values = _apply_changes([array("i", sids), array("d", values)], (None, 2), index, changes)
    return sids, values


def _apply_changes(arrays: list, fields: tuple[int | None, ...], index: dict[int, int],
                   changes: dict[int, Acc | None]) -> list:
    """Parallel arrays (a row per student, `index` their positions) with `changes` applied: set, add
    or (None) remove a student's row; `fields[k]` is what arrays[k] holds of an accumulator (None:
    the student id). Changed in place; where rows are removed, new arrays without them."""
    gone = set()
    for sid, acc in changes.items():
        i = index.get(sid)
        if acc is None:
            if i is not None:
                gone.add(i)
        elif i is None:
            for a, f in zip(arrays, fields, strict=True):
                a.append(sid if f is None else acc[f])
        else:
            for a, f in zip(arrays, fields, strict=True):
                if f is not None:
                    a[i] = acc[f]
    if not gone:
        return arrays
    keep = [i for i in range(len(arrays[0])) if i not in gone]
    return [array(a.typecode, [a[i] for i in keep]) if isinstance(a, array) else [a[i] for i in keep]
            for a in arrays]


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
    latest: dict[str, Entry] = {}
    for en in entries:
        if en.period_key not in latest or en.id > latest[en.period_key].id:
            latest[en.period_key] = en
    total = 0.0
    for key in sorted(latest):
        total += latest[key].value
    return len(latest), total, pv.value, max(en.id for en in entries), max(latest)
