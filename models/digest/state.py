"""The digest's STATE: every student's point-value accumulators as of a finished week, kept in
table digest_state so that next week's digest reads only the entries that came after it.

The state as of Sunday C holds, for every (student, point) of the semester, the accumulators of
the live entries with occurred_on ≤ C and created_at < I, I being the Monday 00:00 (APP_TIMEZONE)
after C: a count and a total (每次课前 means, counts), the newest value and its id (points whose
newest value counts), the number of periods, the total of each period's newest value and the
last period (周末 and 月末 points); and every student's card scores from those values.
`max_entry_id` is the largest id of an entry created before I, `pending` the ids up to it of
entries not in the state (created at or after I, dated after C: rare). It is built no sooner than
an hour after I, so every transaction that wrote an entry created before I has committed: no
entry up to max_entry_id can still appear. `built_at` is when its reading began.

Only the weekly job persists a state; the newest state of the semester, the one a week older
(本周概况 later in the week needs it) and the last state of the previous semester (the first weeks
of a semester compare with its end) are kept. This module is the state and its record; how a
state is merged with new entries is models/digest/fold.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from array import array
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from math import isnan, nan

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.card import Scores
from models.catalogue import DOMAINS, Catalogue
from models.periods import Term
from models.schema import DigestState

FORMAT = 3  # of DigestState.data; a state of another format is ignored (and replaced)
SETTLE = timedelta(hours=1)  # how long after I a state may be built; the margin on revoked_at
CHUNK = 900  # ids or students per IN list (SQLite allows 999 parameters)

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


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
        """The accumulator at position `i`."""
        return self.n[i], self.total[i], self.value[i], self.last[i], self.key[i]

    def update(self, changes: dict[int, Acc | None]) -> None:
        """Set, add or (None) remove students' accumulators."""
        (self.sid, self.n, self.total, self.value, self.last, self.key) = apply_changes(
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
        """How many (student, point) pairs it holds."""
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
                 aware(row.built_at)), row.id


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


def aware(at: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at



def apply_changes(arrays: list, fields: tuple[int | None, ...], index: dict[int, int],
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

