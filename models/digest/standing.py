"""Every student's card scores at the digest's two cutoffs: the week's Sunday S and the Sunday before.

The digest reports each domain's mean over students of the card's subtotals as of S and as of
S − 7, so it needs every student's semester-to-date point values at both. Computing them from
every entry of the semester is one GROUP BY over millions of rows; instead the newest state
(models/digest/state.py) is merged with the entries since (models/digest/fold.py), and the card
formula (models.card.Formula, the one the cards use) scores every student at once: as of S for
every student, and as of S − 7 only for those the delta changed there (the others keep the
state's scores). In the first week of a semester the values before are those at the end of the
previous semester, merged the same way from that semester's last state. Only the weekly job
persists a new state (`persist`); 本周概况 reads the newest one and writes none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sqlalchemy.orm import Session

from models.card import Formula, Scores, value_kind
from models.catalogue import Catalogue
from models.db import tune_for_aggregates
from models.digest.fold import Fold
from models.digest.state import SETTLE, State, load_record, save_state, state_header
from models.periods import Term
from models.schema import utcnow


@dataclass
class Standing:
    """Every student's card scores at the week's Sunday and the Sunday before, and the week's data entry."""

    now: dict[int, Scores]
    before: dict[int, Scores]
    week_done: dict[str, set[int]]  # point code → students with an entry dated in the week
    from_state: date | None = None  # the cutoff of the state the values were merged from
    before_from_state: date | None = None  # the same for the values before, when of another semester



def split_instant(sunday: date, zone: tzinfo) -> datetime:
    """I: the Monday 00:00 after `sunday`, local time, in UTC (SQLite compares datetimes as UTC text)."""
    return datetime.combine(sunday + timedelta(days=1), time(0), zone).astimezone(UTC)



def standing(session: Session, catalogue: Catalogue, term: Term, sunday: date, monday: date,
             previous: tuple[Term, date], zone: tzinfo, *, persist: bool) -> Standing:
    """Card scores as of `sunday` and as of `previous` (its term and day: the Sunday before, or the
    end of the previous semester), merged from the newest state; a new state too when `persist`."""
    return begin_standing(session, catalogue, term, sunday, monday, previous, zone, persist=persist)()


def begin_standing(session: Session, catalogue: Catalogue, term: Term, sunday: date, monday: date,
                   previous: tuple[Term, date], zone: tzinfo, *,
                   persist: bool) -> Callable[[], Standing]:
    """`standing` in two steps: this finds the state and (PostgreSQL) starts reading the week's delta
    on a connection of its own; the function it returns does the rest. In between the caller may
    use the session for its other queries while the database aggregates the delta."""
    tune_for_aggregates(session)
    math = Formula(catalogue, catalogue.individual())
    kinds = {p.code: value_kind(p) for p in catalogue.individual()}
    prev_term, prev_day = previous
    same_term = prev_term.key == term.key
    header = state_header(session, catalogue, term, prev_day) if same_term else None
    split = split_instant(sunday, zone)
    started = utcnow()
    build = persist and started >= split + SETTLE
    fold = Fold(session, catalogue, kinds, term, header[0] if header else State(term.key, term.start),
                 sunday, prev_day if same_term else None, split if build else None, monday)
    base = None
    if header is not None:
        fold.prefetch()  # PostgreSQL: the week's delta on a second connection, meanwhile the record
        base = load_record(session, *header)
        if base is None:
            fold = Fold(session, catalogue, kinds, term, State(term.key, term.start), sunday, prev_day,
                         split if build else None, monday)
    return lambda: _finish(session, math, kinds, term, sunday, previous, base, fold, started, build)


def _finish(session: Session, math: Formula, kinds: dict[str, str], term: Term, sunday: date,
            previous: tuple[Term, date], base: State | None, fold: Fold, started: datetime,
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
        earlier = Fold(session, catalogue, kinds, prev_term, last or State(prev_term.key, prev_term.start),
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

