"""The card: per-point semester values, domain subtotals, total and value added.

Pure functions over plain values; the formula is documented in catalogue.toml
and in the README ("The card formula").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from statistics import fmean

from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.periods import UNIT_OF_PERIOD


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
    point: ScorePoint
    value: PointValue
    card_points: float


@dataclass
class DomainCard:
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
        if self.total is None or self.previous_total is None:
            return None
        return round(self.total - self.previous_total, 1)

    def subtotal(self, domain: str) -> float | None:
        return next(d.subtotal for d in self.domains if d.domain == domain)

    def domain_added(self, domain: str) -> float | None:
        now, before = self.subtotal(domain), self.previous_subtotals.get(domain)
        return None if now is None or before is None else round(now - before, 1)


def point_value(point: ScorePoint, entries: list[Entry]) -> PointValue | None:
    """The semester value of one point from its live entries (see the formula)."""
    if not entries:
        return None
    last_on = max(e.occurred_on for e in entries)
    if point.is_observation:
        return PointValue(fmean(e.value for e in entries), len(entries), last_on)
    if point.accumulates:
        periods = len({e.period_key for e in entries})
        return PointValue(float(sum(e.value for e in entries)), periods, last_on)
    latest: dict[str, Entry] = {}
    for e in entries:
        if e.period_key not in latest or e.id > latest[e.period_key].id:
            latest[e.period_key] = e
    if UNIT_OF_PERIOD[point.period] in ("week", "month"):
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


def build_card(catalogue: Catalogue, values: dict[str, PointValue],
               visible: Callable[[ScorePoint], bool] = lambda p: True,
               points: Iterable[ScorePoint] | None = None) -> Card:
    """Subtotals and total from point values. Hidden points still count, unseen.

    Every viewer sees the same subtotals and total; `visible` only decides which
    lines are shown (sensitive points to those allowed to see them).
    """
    pool = list(points) if points is not None else catalogue.points
    domains = []
    for domain in DOMAINS:
        lines, weighted, weights = [], 0.0, 0.0
        for point in pool:
            if point.domain != domain or point.code not in values:
                continue
            pv = values[point.code]
            cp = point.card_points(pv.value)
            weighted += cp * point.weight
            weights += point.weight
            if visible(point):
                lines.append(CardLine(point, pv, cp))
        subtotal = round(weighted / weights, 1) if weights else None
        domains.append(DomainCard(domain, subtotal, lines))
    return Card(domains, _total(catalogue, domains))


def _total(catalogue: Catalogue, domains: list[DomainCard]) -> float | None:
    weights = catalogue.formula.domain_weights
    present = [(d.subtotal, weights.get(d.domain, 0.0)) for d in domains if d.subtotal is not None]
    denom = sum(w for _s, w in present)
    if not denom:
        return None
    return round(sum(s * w for s, w in present) / denom, 1)


def with_previous(card: Card, previous: Card) -> Card:
    """Attach the previous period's total and subtotals for value added."""
    card.previous_total = previous.total
    card.previous_subtotals = {d.domain: d.subtotal for d in previous.domains}
    return card
