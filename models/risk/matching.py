"""Matching: which students a rule finds, with the evidence as values (the words are templates).

Pure over the aggregates (models/risk/aggregates.py); the same code serves the daily scan (every
student) and the check right after a recording (the students recorded, the rules it could trip).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.card import domain_subtotals
from models.cards import chunks
from models.catalogue import Catalogue, ScorePoint
from models.expected import is_final_year
from models.periods import UNIT_OF_PERIOD, Calendar, period_key
from models.risk.aggregates import (
    Aggregate,
    Window,
    aggregates,
    point_measure,
    valued_by_latest,
    window_bounds,
    window_label,
)
from models.risk.rules import LEVELS, Rule, RuleBook
from models.schema import SchoolClass, ScoreEntry, Student


@dataclass(frozen=True)
class Evidence:
    """One line of evidence as values: its kind (the template it reads as: mean, sum, count,
    latest, missing, trend, flag), what it shows, the day it refers to, and the key that tells
    new evidence from known."""

    point: str | None
    kind: str
    facts: tuple[tuple[str, Any], ...]
    on: date | None
    key: str  # what identifies the evidence (values, counts, last day), to tell new from known

    @property
    def values(self) -> dict[str, Any]:
        """What the evidence template shows."""
        return dict(self.facts)

    def as_json(self, text: str) -> dict:
        """The evidence as an event stores it, with its words."""
        return {"point": self.point, "text": text, "on": self.on.isoformat() if self.on else None}


def evidence(point: str | None, kind: str, on: date | None, key: str, **facts: Any) -> Evidence:  # noqa: ANN401
    """An Evidence value from keyword facts."""
    return Evidence(point, kind, tuple(facts.items()), on, key)


@dataclass(frozen=True)
class Finding:
    """A rule that matched one student, at the rule's level (or a flag's), with its evidence."""

    student_id: int
    rule: Rule
    level: str
    evidence: tuple[Evidence, ...]
    actor_id: int | None = None
    actor: str = "system"
    note: str | None = None
    recorders: frozenset[int] = frozenset()  # who recorded the evidence: the 任课教师 to tell

    @property
    def signature(self) -> str:
        """The rule and its evidence keys: the same signature is the same evidence."""
        return f"{self.rule.id}|" + ";".join(e.key for e in self.evidence)

    @property
    def rank(self) -> int:
        """The level's place in LEVELS."""
        return LEVELS.index(self.level)


def describe(point: ScorePoint, measure: str, agg: Aggregate, window: str) -> Evidence:
    """Evidence of a point's measure (push/warning_evidence_<measure>.txt): 全勤率 近4周 85%（3次记录均值，至11-14）.

    Weekly and monthly values are counted as records, not weeks: a 28-day window ending on a
    Tuesday holds five weekly values (this week's too), and "近4周 … 5周均值" read as a mistake."""
    value = agg.measure(measure)
    assert value is not None
    last = f"{agg.last_on:%m-%d}" if agg.last_on else "—"
    return evidence(point.code, measure, agg.last_on, f"{point.code}={value:.1f}/{agg.n}/{agg.last_on}",
                    short=point.short, window=window_label(window), shown=point.display_value(value), n=agg.n,
                    observation=point.is_observation, last=last)


def match_threshold(rule: Rule, catalogue: Catalogue, aggs: dict[tuple[int, str], Aggregate],
                    eligible: set[int] | None = None) -> list[Finding]:
    """Students for whom any of the rule's points meets its condition (with enough observations)."""
    assert rule.when is not None
    hits: dict[int, list[tuple[str, Aggregate]]] = defaultdict(list)
    points = set(rule.points)
    for (sid, code), agg in aggs.items():
        if code not in points or (eligible is not None and sid not in eligible) or agg.n < rule.min_count:
            continue
        value = agg.measure(rule.when.measure)
        if value is not None and rule.when.holds(value):
            hits[sid].append((code, agg))
    return [Finding(sid, rule, rule.level, tuple(describe(catalogue.by_code[code], rule.when.measure, agg, rule.window)
                                                for code, agg in sorted(found, key=lambda h: h[0])))
            for sid, found in sorted(hits.items())]




def match_missing(rule: Rule, catalogue: Catalogue, aggs: dict[tuple[int, str], Aggregate],
                  eligible: set[int], graduation: date | None) -> list[Finding]:
    """Eligible students with none of the rule's points recorded in the window."""
    out = []
    names = tuple(catalogue.by_code[c].short for c in rule.points)
    until = f"{graduation:%m-%d}" if graduation else None
    for sid in sorted(eligible):
        if any((sid, code) in aggs for code in rule.points):
            continue
        found = evidence(None, "missing", None, f"missing:{rule.window}:{graduation}",
                         names=names, window=window_label(rule.window), graduation=until)
        out.append(Finding(sid, rule, rule.level, (found,)))
    return out


def trend_points(catalogue: Catalogue, domain: str) -> list[ScorePoint]:
    """Points a trend rule compares: 0–100 measures of the domain (counts would scale with the window)."""
    return [p for p in catalogue.individual() if p.domain == domain and p.kind in ("rate", "score") and p.weight > 0]


def match_trend(rule: Rule, catalogue: Catalogue, recent: dict[tuple[int, str], Aggregate],
                before: dict[tuple[int, str], Aggregate]) -> list[Finding]:
    """Students whose domain subtotal over the window is `drop` points below the baseline period's."""
    assert rule.domain is not None
    measures = {p.code: point_measure(p) for p in trend_points(catalogue, rule.domain)}
    now_values: dict[int, dict[str, float]] = defaultdict(dict)
    then_values: dict[int, dict[str, float]] = defaultdict(dict)
    for source, target in ((recent, now_values), (before, then_values)):
        for (sid, code), agg in source.items():
            if code in measures and (value := agg.measure(measures[code])) is not None:
                target[sid][code] = value
    # Both subtotals come from the card's formula, over the points a student has in both windows.
    compared = {sid: sorted(set(now_values[sid]) & set(then_values.get(sid, {}))) for sid in sorted(now_values)}
    compared = {sid: common for sid, common in compared.items() if len(common) >= rule.min_points}
    now_subs = domain_subtotals(catalogue, rule.domain, {sid: {c: now_values[sid][c] for c in common}
                                                         for sid, common in compared.items()})
    then_subs = domain_subtotals(catalogue, rule.domain, {sid: {c: then_values[sid][c] for c in common}
                                                          for sid, common in compared.items()})
    out = []
    for sid, common in compared.items():
        now_sub, then_sub = now_subs.get(sid), then_subs.get(sid)
        if now_sub is None or then_sub is None or then_sub - now_sub < rule.drop:
            continue
        last = max((recent[(sid, c)].last_on for c in common if recent[(sid, c)].last_on), default=None)
        found = evidence(None, "trend", last, f"trend={now_sub:.1f}/{then_sub:.1f}",
                         domain=rule.domain, window=window_label(rule.window),
                         before=window_label(rule.baseline or "")[1:], now=f"{now_sub:.1f}",
                         then=f"{then_sub:.1f}", drop=f"{then_sub - now_sub:.1f}",
                         names=tuple(catalogue.by_code[c].short for c in common))
        out.append(Finding(sid, rule, rule.level, (found,)))
    return out


# ── finding ──────────────────────────────────────────────────────────────────

def final_year_students(session: Session, cal: Calendar, today: date, within_days: int,
                        students: Sequence[int] | None = None) -> tuple[set[int], date | None]:
    """Students of classes in their graduation year within `within_days` of graduating, and that day."""
    term = cal.term_for(today)
    graduation = (term if term.term == 2 else cal.next_term(term)).end
    if not 0 <= (graduation - today).days <= within_days:
        return set(), graduation
    classes = [cid for cid, grade in session.execute(select(SchoolClass.id, SchoolClass.grade))
               if is_final_year(grade, term)]
    if not classes:
        return set(), graduation
    query = select(Student.id).where(Student.class_id.in_(classes))
    found = set(session.scalars(query))
    return (found if students is None else found & set(students)), graduation


def find(session: Session, book: RuleBook, catalogue: Catalogue, cal: Calendar, today: date,
         rules: Sequence[Rule], students: Sequence[int] | None = None) -> list[Finding]:
    """Every finding of `rules` for `students` (None: everyone), from one aggregate over all their windows."""
    cohorts: dict[int, tuple[set[int], date | None]] = {}
    active: list[tuple[Rule, set[int] | None, date | None]] = []
    for rule in rules:
        eligible: set[int] | None = None
        graduation = None
        if rule.cohort == "final_year":
            if rule.graduation_within_days not in cohorts:
                cohorts[rule.graduation_within_days] = final_year_students(
                    session, cal, today, rule.graduation_within_days, students)
            eligible, graduation = cohorts[rule.graduation_within_days]
            if not eligible:
                continue  # nobody it could concern: its window is not even aggregated
        active.append((rule, eligible, graduation))
    codes: dict[tuple[date, date], set[str]] = defaultdict(set)
    latest: dict[tuple[date, date], set[str]] = defaultdict(set)
    for rule, _eligible, _graduation in active:
        span = window_bounds(rule.window, today, cal)
        if rule.kind in ("threshold", "missing"):
            codes[span] |= set(rule.points)
            if rule.when is not None and rule.when.measure == "latest":
                latest[span] |= set(rule.points)
        elif rule.kind == "trend":
            points = trend_points(catalogue, rule.domain or "")
            for part in (span, _baseline(rule, today, cal)):
                codes[part] |= {p.code for p in points}
                latest[part] |= {p.code for p in points if valued_by_latest(p)}
    aggs = aggregates(session, catalogue, cal, [Window(s, e, frozenset(c), frozenset(latest[(s, e)]))
                                                for (s, e), c in codes.items()], students)
    by_point: dict[tuple[date, date], dict[str, dict[tuple[int, str], Aggregate]]] = {}

    def of_points(span: tuple[date, date], points: Iterable[str]) -> dict[tuple[int, str], Aggregate]:
        """A window's aggregates of some points only (a rule reads one or two of a window's dozen)."""
        if span not in by_point:
            by_point[span] = defaultdict(dict)
            for key, agg in aggs[span].items():
                by_point[span][key[1]][key] = agg
        return {k: a for code in points for k, a in by_point[span].get(code, {}).items()}

    findings: list[Finding] = []
    for rule, eligible, graduation in active:
        span = window_bounds(rule.window, today, cal)
        if rule.kind == "threshold":
            found = match_threshold(rule, catalogue, of_points(span, rule.points), eligible)
            if "任课教师" in rule.recipients and found:
                found = _with_recorders(session, catalogue, cal, rule, found, *span)
            findings += found
        elif rule.kind == "missing":
            findings += match_missing(rule, catalogue, of_points(span, rule.points), eligible or set(), graduation)
        elif rule.kind == "trend":
            findings += match_trend(rule, catalogue, aggs[span], aggs[_baseline(rule, today, cal)])
    return findings


def _baseline(rule: Rule, today: date, cal: Calendar) -> tuple[date, date]:
    """The days a trend rule compares its window with: `baseline` days just before it."""
    start, _end = window_bounds(rule.window, today, cal)
    return window_bounds(rule.baseline or "56d", start - timedelta(days=1), cal)


def _with_recorders(session: Session, catalogue: Catalogue, cal: Calendar, rule: Rule, findings: list[Finding],
                    start: date, end: date) -> list[Finding]:
    """The findings with the staff who recorded their evidence (one query per rule, not per student)."""
    who: dict[int, set[int]] = defaultdict(set)
    where = [ScoreEntry.revoked_at.is_(None), ScoreEntry.point_code.in_(rule.points), ScoreEntry.occurred_on >= start,
             ScoreEntry.occurred_on <= end, ScoreEntry.recorder_id.is_not(None)]
    if all(UNIT_OF_PERIOD[catalogue.by_code[c].period] in ("week", "month") for c in rule.points):
        # A week's or month's key follows from the day alone, so naming the window's periods only
        # lets the (student, point, period) index find the entries instead of a pass over them all.
        days = (start + timedelta(days=i) for i in range((end - start).days + 1))
        where.append(ScoreEntry.period_key.in_(sorted({period_key(catalogue.by_code[c].period, d, cal)
                                                        for d in days for c in rule.points})))
    # PostgreSQL takes thousands of ids at once: one query, not one per 900 students.
    size = 30_000 if session.get_bind().dialect.name == "postgresql" else 900
    for chunk in chunks(sorted({f.student_id for f in findings}), size):
        rows = session.execute(select(ScoreEntry.student_id, ScoreEntry.recorder_id)
                               .where(*where, ScoreEntry.student_id.in_(chunk)).distinct())
        for sid, staff_id in rows:
            who[sid].add(staff_id)
    return [replace(f, recorders=frozenset(who.get(f.student_id, ()))) for f in findings]
# A new value at or above a "below" threshold cannot newly bring a mean or latest value
# below it, so such a recording (the everyday "全勤率 … 100") costs the callback nothing.
# The one exception, a replacement that lowers a period's value while staying above the
# line, is caught by the daily scan.
TREND_LOW_CARD_POINTS = 70.0


def could_raise(rule: Rule, entries: Sequence[ScoreEntry]) -> bool:
    """Can these new entries make the rule's condition hold where it did not before?"""
    if rule.when is None or rule.when.op not in ("<", "<="):
        return True
    return any(e.point_code in rule.points and rule.when.holds(e.value) for e in entries)


def _lowers(catalogue: Catalogue, entries: Sequence[ScoreEntry], domain: str) -> bool:
    """Does any new entry of the domain score low enough to pull a subtotal down?"""
    return any(e.point_code in catalogue.by_code and catalogue.by_code[e.point_code].domain == domain
               and catalogue.by_code[e.point_code].card_points(e.value) < TREND_LOW_CARD_POINTS
               for e in entries)


def rules_touched(book: RuleBook, catalogue: Catalogue, entries: Sequence[ScoreEntry]) -> list[Rule]:
    """The automatic rules that these new entries could trigger."""
    codes = {e.point_code for e in entries if e.student_id}
    domains = {catalogue.by_code[c].domain for c in codes if c in catalogue.by_code
               and catalogue.by_code[c].kind in ("rate", "score")}
    return [r for r in book.automatic()
            if (r.kind == "threshold" and codes & set(r.points) and could_raise(r, entries))
            or (r.kind == "trend" and r.domain in domains and _lowers(catalogue, entries, r.domain))]

