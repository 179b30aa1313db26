"""The card: per-point semester values, domain subtotals, total and value added.

The one card formula. A point's semester value comes from its live entries (`point_value`, the
way `value_kind` names); `Formula.scores` turns point values into subtotals and a total for many
holders at once (the digest: every student of the college), and `build_cards` / `build_card`
make the cards people read from those same scores. Pure functions over plain values; the formula
is documented in catalogue.toml and in the README ("The card formula").
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from statistics import fmean

import numpy as np

from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.periods import UNIT_OF_PERIOD

# How a point's semester value is made from its entries (see `point_value`).
MEAN, SUM, NEWEST, PERIODS = "mean", "sum", "newest", "period_mean"


@dataclass(frozen=True)
class Entry:
    """A live (not revoked) score entry, reduced to what the card needs."""

    id: int
    point_code: str
    period_key: str
    occurred_on: date
    value: float


@dataclass(frozen=True)
class PointValue:
    """A point's value over the semester so far, and how many periods or sessions made it."""

    value: float
    periods: int
    last_on: date | None


@dataclass
class CardLine:
    """One point shown on a card: its value and the card points it gives."""

    point: ScorePoint
    value: PointValue
    card_points: float


@dataclass
class DomainCard:
    """One domain of a card: its subtotal and the lines the viewer may see."""

    domain: str
    subtotal: float | None
    lines: list[CardLine] = field(default_factory=list)


@dataclass
class Card:
    """What `储值卡` and `班级卡` show."""

    domains: list[DomainCard]
    total: float | None
    previous_total: float | None = None
    previous_subtotals: dict[str, float | None] = field(default_factory=dict)

    @property
    def value_added(self) -> float | None:
        """The total's change since the previous period (None without both totals)."""
        if self.total is None or self.previous_total is None:
            return None
        return round(self.total - self.previous_total, 1)

    def subtotal(self, domain: str) -> float | None:
        """The subtotal of `domain`."""
        return next(d.subtotal for d in self.domains if d.domain == domain)

    def domain_added(self, domain: str) -> float | None:
        """A domain subtotal's change since the previous period."""
        now, before = self.subtotal(domain), self.previous_subtotals.get(domain)
        return None if now is None or before is None else round(now - before, 1)


@dataclass(frozen=True)
class Scores:
    """A card's numbers: subtotals by domain (in DOMAINS order) and total (None where nothing counts)."""

    subtotals: tuple[float | None, ...]
    total: float | None


EMPTY = Scores((None,) * len(DOMAINS), None)


# ── point values ─────────────────────────────────────────────────────────────

def value_kind(point: ScorePoint) -> str:
    """How a point's semester value is made: MEAN, SUM, PERIODS (the mean over periods of each
    period's newest value) or NEWEST (the newest value of all)."""
    if point.is_observation:
        return MEAN
    if point.accumulates:
        return SUM
    if UNIT_OF_PERIOD[point.period] in ("week", "month"):
        return PERIODS
    return NEWEST


def newest_per_period(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Each period's newest entry (the largest id: a later recording replaces an earlier one)."""
    latest: dict[str, Entry] = {}
    for e in entries:
        if e.period_key not in latest or e.id > latest[e.period_key].id:
            latest[e.period_key] = e
    return latest


def point_value(point: ScorePoint, entries: list[Entry]) -> PointValue | None:
    """The semester value of one point from its live entries (see the formula)."""
    if not entries:
        return None
    last_on = max(e.occurred_on for e in entries)
    kind = value_kind(point)
    if kind == MEAN:
        return PointValue(fmean(e.value for e in entries), len(entries), last_on)
    if kind == SUM:
        periods = len({e.period_key for e in entries})
        return PointValue(float(sum(e.value for e in entries)), periods, last_on)
    latest = newest_per_period(entries)
    if kind == PERIODS:
        return PointValue(fmean(e.value for e in latest.values()), len(latest), last_on)
    newest = max(latest.values(), key=lambda e: e.id)
    return PointValue(newest.value, 1, last_on)


def point_values(catalogue: Catalogue, entries: Iterable[Entry],
                 cutoff: date | None = None) -> dict[str, PointValue]:
    """Semester values of every point that has entries on or before `cutoff`."""
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if cutoff is None or e.occurred_on <= cutoff:
            grouped[e.point_code].append(e)
    out = {}
    for code, group in grouped.items():
        point = catalogue.by_code.get(code)
        if point is not None:
            value = point_value(point, group)
            if value is not None:
                out[code] = value
    return out


def derive_class_values(catalogue: Catalogue, per_student: list[dict[str, PointValue]],
                        class_size: int) -> dict[str, PointValue]:
    """Class points computed from the students' values (means, sums and shares)."""
    out = {}
    for point in catalogue.for_class():
        rule = point.derived
        if rule is None:
            continue
        found = [v[rule.of] for v in per_student if rule.of in v]
        if not found:
            continue
        values = [v.value for v in found]
        last_on = max((v.last_on for v in found if v.last_on), default=None)
        source = catalogue.by_code[rule.of]
        if rule.op == "mean":
            value = fmean(values)
        elif rule.op == "sum":
            value = float(sum(values))
        else:
            # A count or level nobody recorded is zero (no 违纪, no competition);
            # anything else is a share of the students who have a value.
            base = class_size if source.kind in ("count", "level") else len(values)
            hits = sum(1 for x in values if rule.matches(x))
            value = 100.0 * hits / base if base else 0.0
        out[point.code] = PointValue(value, len(found), last_on)
    return out


# ── subtotals and total: the formula, for many holders at once ──────────────

# (holder ids, values) of one point: parallel sequences, a holder at most once.
Column = tuple[Sequence[int], Sequence[float]]


class Formula:
    """Subtotals and total from point values, for many holders (students, a class) at once.

    A domain's subtotal is the weighted mean of the card points of its recorded points, added in
    catalogue order and rounded to one decimal; the total is the domain-weighted mean of the
    subtotals present, rounded. Hidden points still count, unseen. Columnwise with numpy: the
    catalogue is gone through once, each point adding its weighted card points to every holder's
    running sums of its domain, so every holder's sums see the same additions in the same order;
    the card points of a (point, value) are computed once.
    """

    def __init__(self, catalogue: Catalogue, points: Iterable[ScorePoint] | None = None) -> None:
        pool = catalogue.points if points is None else points
        self.points = [(p.code, DOMAINS.index(p.domain), p, p.weight) for p in pool]
        self.domain_weights = [catalogue.formula.domain_weights.get(d, 0.0) for d in DOMAINS]

    def scores(self, columns: Mapping[str, Column], holders: set[int] | None = None) -> dict[int, Scores]:
        """Every holder's scores (or only those of `holders`) from (holder ids, values) per point.

        Holders without any value of the pool's points are left out (their scores are EMPTY).
        """
        arrays = {code: (_ints(ids), _floats(values)) for code, (ids, values) in columns.items()}
        if holders is not None:
            wanted = np.fromiter(holders, dtype=np.int64, count=len(holders))
            arrays = {code: (ids[mask], values[mask]) for code, (ids, values) in arrays.items()
                      for mask in (np.isin(ids, wanted),)}
        arrays = {code: arrays[code] for code, _d, _p, _w in self.points
                  if code in arrays and len(arrays[code][0])}
        if not arrays:
            return {}
        present = np.unique(np.concatenate([ids for ids, _values in arrays.values()]))
        size = int(present[-1]) + 1
        weighted = np.zeros((len(DOMAINS), size))
        weights = np.zeros((len(DOMAINS), size))
        for code, d, point, weight in self.points:
            if code not in arrays:
                continue
            ids, values = arrays[code]
            distinct = sorted(set(values.tolist()))  # the card points of each distinct value, once
            points = np.array([point.card_points(v) * weight for v in distinct])
            weighted[d, ids] += points[np.searchsorted(distinct, values)]  # a holder is once in a column
            weights[d, ids] += weight
        sums, counts = weighted[:, present], weights[:, present]
        with np.errstate(divide="ignore", invalid="ignore"):
            means = (sums / counts).tolist()
        recorded = (counts != 0).tolist()
        per_domain = [[round(m, 1) if r else None for m, r in zip(ms, rs, strict=True)]
                      for ms, rs in zip(means, recorded, strict=True)]
        domain_weights = self.domain_weights
        out = {}
        for holder, subtotals in zip(present.tolist(), zip(*per_domain, strict=True), strict=True):
            num = denom = 0  # over the present domains, in order, from 0
            for s, w in zip(subtotals, domain_weights, strict=True):
                if s is not None:
                    num += s * w
                    denom += w
            out[holder] = Scores(subtotals, round(num / denom, 1) if denom else None)
        return out


def domain_subtotals(catalogue: Catalogue, domain: str,
                     values: Mapping[int, Mapping[str, float]]) -> dict[int, float | None]:
    """One domain's subtotal for many holders (id → point code → value), as a card shows it."""
    columns: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for holder, mine in values.items():
        for code, value in mine.items():
            columns[code][0].append(holder)
            columns[code][1].append(value)
    d = DOMAINS.index(domain)
    return {holder: scores.subtotals[d] for holder, scores in Formula(catalogue).scores(columns).items()}


def _ints(a: Sequence[int]) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, array) and a.typecode == "i":
        return np.frombuffer(a, dtype=np.intc) if len(a) else np.zeros(0, np.intc)
    return np.asarray(a, dtype=np.int64)


def _floats(a: Sequence[float]) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, array) and a.typecode == "d":
        return np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0)
    return np.asarray(a, dtype=np.float64)


# ── cards ────────────────────────────────────────────────────────────────────

def build_cards(catalogue: Catalogue, values: Mapping[int, Mapping[str, PointValue]],
                visible: Callable[[ScorePoint], bool] = lambda p: True,
                points: Iterable[ScorePoint] | None = None) -> dict[int, Card]:
    """Cards of many holders (id → point values) at once, their numbers from one `Formula` run.

    Every viewer sees the same subtotals and total; `visible` only decides which lines are shown
    (sensitive points to those allowed to see them).
    """
    pool = list(points) if points is not None else catalogue.points
    columns: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for holder, mine in values.items():
        for code, pv in mine.items():
            ids, vals = columns[code]
            ids.append(holder)
            vals.append(pv.value)
    scores = Formula(catalogue, pool).scores(columns)
    return {holder: _card(pool, mine, scores.get(holder, EMPTY), visible) for holder, mine in values.items()}


def build_card(catalogue: Catalogue, values: Mapping[str, PointValue],
               visible: Callable[[ScorePoint], bool] = lambda p: True,
               points: Iterable[ScorePoint] | None = None) -> Card:
    """One card from point values (see `build_cards`)."""
    return build_cards(catalogue, {0: values}, visible, points)[0]


def _card(pool: list[ScorePoint], values: Mapping[str, PointValue], scores: Scores,
          visible: Callable[[ScorePoint], bool]) -> Card:
    lines: dict[str, list[CardLine]] = {d: [] for d in DOMAINS}
    for point in pool:
        pv = values.get(point.code)
        if pv is not None and visible(point):
            lines[point.domain].append(CardLine(point, pv, point.card_points(pv.value)))
    domains = [DomainCard(d, scores.subtotals[i], lines[d]) for i, d in enumerate(DOMAINS)]
    return Card(domains, scores.total)


def with_previous(card: Card, previous: Card) -> Card:
    """Attach the previous period's total and subtotals for value added."""
    card.previous_total = previous.total
    card.previous_subtotals = {d.domain: d.subtotal for d in previous.domains}
    return card
