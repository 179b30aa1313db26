"""Early warnings (预警): rules as data, evaluation from aggregates, routing that respects privacy,
escalation, closing the loop, and the measures the digest reports.

The rules live in `risk_rules.toml` (documented there). Evaluation is set-based: one aggregate
per (student, point) over each rule's window, all windows from one GROUP BY, then pure matching
in Python; the same code serves the daily scan (every student) and the check right after a
recording (the students recorded). The changes are decided in memory, then written a table at
a time (warnings, events, routing, notices, outbox rows), never a row at a time. One warning is
open per (student, category): new evidence updates it and may raise its level, never opens a
twin (the unique open_key decides, even against a concurrent writer). Messages go through the
outbox; a `RiskNotice` row per (warning, person, event) makes every rerun send nothing new.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Integer, and_, case, cast, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from core.render import render
from models.authz import View
from models.catalogue import Catalogue, ScorePoint, normalise
from models.db import in_ids, plain_rows, tune_for_aggregates
from models.expected import is_final_year
from models.outbox import Draft, enqueue_many, insert_rows, queued_ids
from models.periods import UNIT_OF_PERIOD, Calendar, period_key, unit_bounds, week_key
from models.schema import (
    Department,
    OutboxMessage,
    RiskNotice,
    RiskWarning,
    RiskWarningEvent,
    RiskWarningRecipient,
    SchoolClass,
    ScoreEntry,
    Staff,
    Student,
    TeachingAssignment,
    utcnow,
)

LEVELS = ("关注", "预警", "严重")
RULE_KINDS = ("threshold", "missing", "trend", "manual")
MEASURES = ("mean", "sum", "latest", "count")
RELATIONS = ("班主任", "辅导员", "学工办", "系部主任", "任课教师")  # a person with two: the first wins
# Who may receive a sensitive warning as an individual case (PRODUCT.md §2).
SENSITIVE_RELATIONS = frozenset({"班主任", "辅导员", "学工办"})
OPEN, HANDLED, FALSE_ALARM = "open", "handled", "false_alarm"
ACTION_KINDS = (HANDLED, FALSE_ALARM)
EVIDENCE_KINDS = ("opened", "raised", "evidence", "flagged")
MESSAGE_LIMIT = 2048  # bytes of a WeCom text message
PURPOSE, BUNDLE_PURPOSE = "warning", "warning_bundle"
DEFAULT_RULES = Path(__file__).with_name("risk_rules.toml")
CLOSED_LOOKBACK_DAYS = 400  # closures older than this cannot hold back a rule (every window is shorter)
_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "==": float.__eq__}
_WINDOW_DAYS = re.compile(r"^(\d{1,3})d$")


class RulesError(ValueError):
    """The rules file is not valid; the message names the rule and the field."""


# ── rules ────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Condition:
    """`mean < 90`: a measure of a point's aggregate compared with a number."""

    measure: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return _OPS[self.op](float(value), self.limit)


@dataclass(frozen=True)
class Category:
    """A warning category with its aliases, card domain and sensitivity."""

    name: str
    aliases: tuple[str, ...] = ()
    domain: str = "个人发展"
    sensitive: bool = False


@dataclass(frozen=True)
class Rule:
    """One rule of the rules file (see its header for every field)."""

    id: str
    category: str
    level: str
    title: str
    kind: str = "threshold"
    points: tuple[str, ...] = ()
    window: str = "28d"
    when: Condition | None = None
    min_count: int = 1
    cohort: str | None = None
    graduation_within_days: int = 122
    recipients: tuple[str, ...] = ("班主任", "辅导员")
    cooldown_days: int = 7
    sensitive: bool = False
    action: str = ""
    why: str = ""
    domain: str | None = None
    baseline: str | None = None
    drop: float = 15.0
    min_points: int = 2

    @property
    def rank(self) -> int:
        return LEVELS.index(self.level)


@dataclass(frozen=True)
class Policy:
    """Escalation, the weekly cap and the card history length."""

    escalate_after_days: float = 3
    escalate_levels: tuple[str, ...] = LEVELS
    weekly_cap: int = 10
    cap_exempt_levels: tuple[str, ...] = ("严重",)
    history_on_card: int = 5


@dataclass
class RuleBook:
    """Every rule and category, checked against the catalogue."""

    policy: Policy
    categories: dict[str, Category]
    rules: list[Rule]

    def __post_init__(self) -> None:
        self.by_id = {r.id: r for r in self.rules}
        self._names = {}
        for c in self.categories.values():
            for name in (c.name, *c.aliases):
                self._names[normalise(name)] = c

    def category(self, token: str) -> Category | None:
        """A category by name or alias."""
        return self._names.get(normalise(token))

    def manual(self, category: str) -> Rule:
        return next(r for r in self.rules if r.kind == "manual" and r.category == category)

    def is_sensitive(self, rule: Rule) -> bool:
        return rule.sensitive or self.categories[rule.category].sensitive

    def automatic(self) -> list[Rule]:
        return [r for r in self.rules if r.kind != "manual"]


def parse_condition(rule_id: str, text: str) -> Condition:
    """`"mean < 90"` → Condition; anything else raises RulesError naming the rule."""
    parts = text.split()
    if len(parts) != 3 or parts[0] not in MEASURES or parts[1] not in _OPS:
        raise RulesError(f"{rule_id}: when={text!r} 应形如 \"mean < 90\"（mean|sum|latest|count）")
    try:
        return Condition(parts[0], parts[1], float(parts[2]))
    except ValueError:
        raise RulesError(f"{rule_id}: when={text!r} 的阈值不是数") from None


def window_ok(text: str) -> bool:
    return text in ("semester", "year") or bool(_WINDOW_DAYS.match(text))


def _rule_from(raw: dict, categories: dict[str, Category], catalogue: Catalogue) -> Rule:
    rid = str(raw.get("id") or "?")
    known = set(Rule.__dataclass_fields__) | {"when"}
    unknown = set(raw) - known
    if unknown:
        raise RulesError(f"{rid}: 未知字段 {', '.join(sorted(unknown))}")
    for key in ("id", "category", "level", "title"):
        if not raw.get(key):
            raise RulesError(f"{rid}: 缺少 {key}")
    if raw["category"] not in categories:
        raise RulesError(f"{rid}: 未知类别 {raw['category']}")
    if raw["level"] not in LEVELS:
        raise RulesError(f"{rid}: level 只能是 {'、'.join(LEVELS)}")
    kind = raw.get("kind", "threshold")
    if kind not in RULE_KINDS:
        raise RulesError(f"{rid}: kind={kind!r} 只能是 {', '.join(RULE_KINDS)}")
    points = tuple(raw.get("points", ()))
    for code in points:
        point = catalogue.by_code.get(code)
        if point is None or point.is_class:
            raise RulesError(f"{rid}: {code} 不是个人采分点")
    recipients = tuple(raw.get("recipients", ("班主任", "辅导员")))
    for relation in recipients:
        if relation not in RELATIONS:
            raise RulesError(f"{rid}: 未知接收人 {relation}（可用：{'、'.join(RELATIONS)}）")
    if not recipients:
        raise RulesError(f"{rid}: recipients 不能为空")
    window = str(raw.get("window", "28d"))
    if not window_ok(window):
        raise RulesError(f"{rid}: window={window!r} 只能是 \"28d\"、\"semester\" 或 \"year\"")
    when = parse_condition(rid, raw["when"]) if raw.get("when") else None
    rule = Rule(
        id=rid, category=raw["category"], level=raw["level"], title=raw["title"], kind=kind,
        points=points, window=window, when=when, min_count=int(raw.get("min_count", 1)),
        cohort=raw.get("cohort"), graduation_within_days=int(raw.get("graduation_within_days", 122)),
        recipients=recipients, cooldown_days=int(raw.get("cooldown_days", 7)),
        sensitive=bool(raw.get("sensitive", False)), action=str(raw.get("action", "")),
        why=str(raw.get("why", "")), domain=raw.get("domain"), baseline=raw.get("baseline"),
        drop=float(raw.get("drop", 15)), min_points=int(raw.get("min_points", 2)),
    )
    if kind == "threshold" and (not points or when is None):
        raise RulesError(f"{rid}: threshold 规则需要 points 和 when")
    if kind == "missing" and (not points or rule.cohort is None):
        raise RulesError(f"{rid}: missing 规则需要 points 和 cohort")
    if kind == "trend":
        if rule.domain not in ("学业发展", "个人发展", "职业发展"):
            raise RulesError(f"{rid}: trend 规则需要 domain（学业发展、个人发展或职业发展）")
        if not rule.baseline or not _WINDOW_DAYS.match(rule.baseline) or not _WINDOW_DAYS.match(window):
            raise RulesError(f"{rid}: trend 规则的 window 和 baseline 须形如 \"28d\"")
    if rule.cohort not in (None, "final_year"):
        raise RulesError(f"{rid}: cohort 只能是 final_year")
    if (rule.sensitive or categories[rule.category].sensitive) and not set(recipients) <= SENSITIVE_RELATIONS:
        raise RulesError(f"{rid}: 敏感预警只能发给 {'、'.join(sorted(SENSITIVE_RELATIONS))}")
    return rule


def parse_rules(data: dict, catalogue: Catalogue, environ: dict[str, str] | None = None) -> RuleBook:
    """Build a `RuleBook` from the parsed TOML, checking every field; env may override the policy."""
    categories: dict[str, Category] = {}
    for raw in data.get("category", []):
        name = raw.get("name")
        if not name:
            raise RulesError("category 缺少 name")
        domain = raw.get("domain", "个人发展")
        if domain not in ("学业发展", "个人发展", "职业发展"):
            raise RulesError(f"类别{name}: domain={domain!r} 不是储值卡的领域")
        categories[name] = Category(name, tuple(raw.get("aliases", ())), domain, bool(raw.get("sensitive", False)))
    rules = [_rule_from(raw, categories, catalogue) for raw in data.get("rule", [])]
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise RulesError("规则 id 重复")
    for name in categories:
        manual = [r for r in rules if r.kind == "manual" and r.category == name]
        if len(manual) != 1:
            raise RulesError(f"类别{name}需要且只能有一条 kind = \"manual\" 的规则（人工预警的接收人）")
    raw_policy = data.get("policy", {})
    env = environ or {}
    escalate_levels = tuple(raw_policy.get("escalate_levels", LEVELS))
    exempt = tuple(raw_policy.get("cap_exempt_levels", ("严重",)))
    if not set(escalate_levels) <= set(LEVELS) or not set(exempt) <= set(LEVELS):
        raise RulesError(f"policy.escalate_levels 和 cap_exempt_levels 只能含 {'、'.join(LEVELS)}")
    try:
        policy = Policy(
            escalate_after_days=float(env.get("WARNING_ESCALATE_AFTER_DAYS")
                                      or raw_policy.get("escalate_after_days", 3)),
            escalate_levels=escalate_levels,
            weekly_cap=int(env.get("WARNING_WEEKLY_CAP") or raw_policy.get("weekly_cap", 10)),
            cap_exempt_levels=exempt,
            history_on_card=int(raw_policy.get("history_on_card", 5)),
        )
    except ValueError as exc:
        raise RulesError(f"policy: {exc}") from None
    if policy.escalate_after_days <= 0 or policy.weekly_cap < 0:
        raise RulesError("policy: escalate_after_days 须为正数，weekly_cap 不能为负")
    return RuleBook(policy, categories, rules)


@lru_cache(maxsize=4)
def load_rules(path: str, catalogue: Catalogue) -> RuleBook:
    """Read and check a rules file (cached per path and catalogue)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    env = {k: v for k in ("WARNING_ESCALATE_AFTER_DAYS", "WARNING_WEEKLY_CAP") if (v := os.environ.get(k))}
    return parse_rules(data, catalogue, env)


def rule_book(catalogue: Catalogue) -> RuleBook:
    """The rules in force: RISK_RULES_PATH, or the shipped `risk_rules.toml`."""
    return load_rules(os.environ.get("RISK_RULES_PATH") or str(DEFAULT_RULES), catalogue)


# ── windows and aggregates ───────────────────────────────────────────────────

def window_bounds(window: str, today: date, cal: Calendar) -> tuple[date, date]:
    """First and last day of a rule window ending today."""
    match = _WINDOW_DAYS.match(window)
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
    match = _WINDOW_DAYS.match(window)
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
    for chunk in _chunks(students):
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


# ── matching (pure) ──────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Evidence:
    """One line of evidence: which point, what a person reads, the day it refers to."""

    point: str | None
    text: str
    on: date | None
    key: str  # what identifies the evidence (values, counts, last day), to tell new from known

    def as_json(self) -> dict:
        return {"point": self.point, "text": self.text, "on": self.on.isoformat() if self.on else None}


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
        return f"{self.rule.id}|" + ";".join(e.key for e in self.evidence)

    @property
    def rank(self) -> int:
        return LEVELS.index(self.level)


def describe(point: ScorePoint, measure: str, agg: Aggregate, window: str) -> Evidence:
    """Evidence text for a point's measure: 全勤率 近4周 85%（3次记录均值，至11-14）.

    Weekly and monthly values are counted as records, not weeks: a 28-day window ending on a
    Tuesday holds five weekly values (this week's too), and "近4周 … 5周均值" read as a mistake."""
    value = agg.measure(measure)
    assert value is not None
    last = f"{agg.last_on:%m-%d}" if agg.last_on else "—"
    shown = point.display_value(value)
    if measure == "mean":
        unit = "次课" if point.is_observation else "次记录"
        text = f"{point.short} {window_label(window)} {shown}（{agg.n}{unit}均值，至{last}）"
    elif measure == "sum":
        text = f"{point.short} {window_label(window)} {shown}（最近 {last}）"
    elif measure == "count":
        text = f"{point.short} {window_label(window)} 记录 {agg.n} 次（最近 {last}）"
    else:
        text = f"{point.short} {shown}（{last}）"
    return Evidence(point.code, text, agg.last_on, f"{point.code}={value:.1f}/{agg.n}/{agg.last_on}")


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
    names = "、".join(catalogue.by_code[c].short for c in rule.points)
    until = f"，{graduation:%m-%d} 毕业" if graduation else ""
    for sid in sorted(eligible):
        if any((sid, code) in aggs for code in rule.points):
            continue
        text = f"{names} {window_label(rule.window)}未录入{until}"
        out.append(Finding(sid, rule, rule.level, (Evidence(None, text, None, f"missing:{rule.window}:{graduation}"),)))
    return out


def domain_subtotal(catalogue: Catalogue, values: dict[str, float]) -> float | None:
    """Weighted mean of card points of the given point values (as the card's domain subtotal)."""
    weighted = weights = 0.0
    for code, value in values.items():
        point = catalogue.by_code[code]
        weighted += point.card_points(value) * point.weight
        weights += point.weight
    return weighted / weights if weights else None


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
    out = []
    for sid in sorted(now_values):
        common = sorted(set(now_values[sid]) & set(then_values.get(sid, {})))
        if len(common) < rule.min_points:
            continue
        now_sub = domain_subtotal(catalogue, {c: now_values[sid][c] for c in common})
        then_sub = domain_subtotal(catalogue, {c: then_values[sid][c] for c in common})
        if now_sub is None or then_sub is None or then_sub - now_sub < rule.drop:
            continue
        last = max((recent[(sid, c)].last_on for c in common if recent[(sid, c)].last_on), default=None)
        names = "、".join(catalogue.by_code[c].short for c in common)
        before = window_label(rule.baseline or "")[1:]
        text = (f"{rule.domain}小计 {window_label(rule.window)} {now_sub:.1f}，此前{before} {then_sub:.1f}"
                f"（下降 {then_sub - now_sub:.1f}；依据 {names}）")
        out.append(Finding(sid, rule, rule.level, (Evidence(None, text, last, f"trend={now_sub:.1f}/{then_sub:.1f}"),)))
    return out


# ── routing ──────────────────────────────────────────────────────────────────

@dataclass
class Directory:
    """Who stands in which relation to the students concerned, loaded with a few queries."""

    class_of: dict[int, int] = field(default_factory=dict)
    head: dict[int, int | None] = field(default_factory=dict)
    counsellor: dict[int, int | None] = field(default_factory=dict)
    department: dict[int, int] = field(default_factory=dict)
    teachers: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    office: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    dept_head: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, student_ids: Iterable[int]) -> Directory:
        d = cls()
        ids = sorted(set(student_ids))
        for chunk in _chunks(ids):
            d.class_of.update(session.execute(select(Student.id, Student.class_id).where(Student.id.in_(chunk))).all())
        class_ids = sorted(set(d.class_of.values()))
        if not class_ids:
            return d
        for cid, head, counsellor, dept in session.execute(select(
                SchoolClass.id, SchoolClass.head_teacher_id, SchoolClass.counsellor_id, SchoolClass.department_id)
                .where(SchoolClass.id.in_(class_ids))):
            d.head[cid], d.counsellor[cid], d.department[cid] = head, counsellor, dept
        for staff_id, cid in session.execute(select(TeachingAssignment.staff_id, TeachingAssignment.class_id)
                                             .where(TeachingAssignment.class_id.in_(class_ids))):
            d.teachers[cid].add(staff_id)
        depts = sorted(set(d.department.values()))
        for staff_id, dept in session.execute(select(Staff.id, Staff.department_id).where(
                Staff.department_id.in_(depts), Staff.roles.contains("学工办"))):
            d.office[dept].add(staff_id)
        for dept, staff_id in session.execute(select(Department.id, Staff.id).join(
                Staff, Staff.staff_no == Department.head_staff_no).where(Department.id.in_(depts))):
            d.dept_head[dept] = staff_id
        return d

    def people(self, student_id: int, relations: Iterable[str], sensitive: bool,
               recorders: frozenset[int] = frozenset()) -> dict[int, str]:
        """staff id → relation, for the relations asked (sensitive: only 班主任, 辅导员, 学工办).

        任课教师 are those of the class who recorded the evidence, when it names them; all of the
        class's teachers otherwise (a trend, say).
        """
        cid = self.class_of.get(student_id)
        if cid is None:
            return {}
        wanted = [r for r in RELATIONS if r in set(relations) and (not sensitive or r in SENSITIVE_RELATIONS)]
        out: dict[int, str] = {}
        for relation in wanted:
            dept = self.department.get(cid)
            found: set[int] = {
                "班主任": {self.head.get(cid)},
                "辅导员": {self.counsellor.get(cid)},
                "任课教师": (self.teachers.get(cid, set()) & recorders) or self.teachers.get(cid, set()),
                "学工办": self.office.get(dept, set()) if dept is not None else set(),
                "系部主任": {self.dept_head.get(dept)} if dept is not None else set(),
            }[relation]
            for staff_id in sorted(s for s in found if s is not None):
                out.setdefault(staff_id, relation)
        return out


def _chunks(items: Sequence[int], size: int = 900) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def may_see(warning: RiskWarning, relation: str) -> bool:
    """A recipient sees a sensitive warning only through a relation that may see sensitive data."""
    return not warning.sensitive or relation in SENSITIVE_RELATIONS


# ── messages ─────────────────────────────────────────────────────────────────

@dataclass
class WarningView:
    """A warning as messages and replies show it."""

    id: int
    category: str
    level: str
    status: str
    sensitive: bool
    student: str
    student_no: str
    class_name: str
    evidence: list[str]
    actions: list[str]
    opened_on: date
    escalated: bool = False

    @property
    def headline(self) -> str:
        return self.evidence[0] if self.evidence else ""


def fit(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Cut a message to WeCom's byte limit on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode("utf-8", errors="ignore") + "…"


def warning_views(session: Session, book: RuleBook, warnings: Sequence[RiskWarning]) -> dict[int, WarningView]:
    """Views of several warnings (student, class, current evidence, suggested actions), in three queries."""
    if not warnings:
        return {}
    students: dict[int, tuple[str, str, str]] = {}
    for chunk in _chunks(sorted({w.student_id for w in warnings})):
        for sid, name, no, class_name in session.execute(
                select(Student.id, Student.name, Student.student_no, SchoolClass.name)
                .join(SchoolClass, SchoolClass.id == Student.class_id).where(Student.id.in_(chunk))):
            students[sid] = (name, no, class_name)
    rules = _contributing_rules(session, [w.id for w in warnings])
    out = {}
    for w in warnings:
        name, no, class_name = students[w.student_id]
        actions = [book.by_id[r].action for r in rules.get(w.id, []) if r in book.by_id and book.by_id[r].action]
        out[w.id] = WarningView(
            id=w.id, category=w.category, level=w.level, status=w.status, sensitive=w.sensitive, student=name,
            student_no=no, class_name=class_name, evidence=[x for x in w.summary.splitlines() if x],
            actions=list(dict.fromkeys(actions)), opened_on=local(w.opened_at).date(),
            escalated=w.escalated_at is not None)
    return out


def warning_view(session: Session, book: RuleBook, warning: RiskWarning) -> WarningView:
    """The view of one warning."""
    return warning_views(session, book, [warning])[warning.id]


def _contributing_rules(session: Session, warning_ids: Sequence[int]) -> dict[int, list[str]]:
    """Rule ids with evidence on each warning, in the order they first contributed."""
    out: dict[int, list[str]] = defaultdict(list)
    for chunk in _chunks(sorted(set(warning_ids))):
        rows = session.execute(select(RiskWarningEvent.warning_id, RiskWarningEvent.rule_id).where(
            RiskWarningEvent.warning_id.in_(chunk), RiskWarningEvent.rule_id.is_not(None))
            .order_by(RiskWarningEvent.id))
        for wid, rid in rows:
            if rid not in out[wid]:
                out[wid].append(rid)
    return out


# ── notifying ────────────────────────────────────────────────────────────────

@dataclass
class NoticeCount:
    """What a run queued."""

    single: int = 0
    bundled: int = 0
    no_account: int = 0


class Notifier:
    """Collects who must hear of which warning event, then queues it all at once: alone under the
    weekly cap, beyond it in one bundle per person (appended to while it is still pending)."""

    def __init__(self, session: Session, book: RuleBook, today: date) -> None:
        self.session = session
        self.book = book
        self.today = today
        self.week = week_key(today)
        self.pending: list[tuple[RiskWarning, int, str, bool, dict]] = []
        self.silent: list[tuple[RiskWarning, int, str]] = []
        self.count = NoticeCount()

    def add(self, warning: RiskWarning, staff_id: int, event_key: str, *, capped: bool = True,
            **context: object) -> None:
        self.pending.append((warning, staff_id, event_key, capped, context))

    def mark_told(self, warning: RiskWarning, staff_id: int, event_key: str) -> None:
        """The person knows already (they raised the flag): a notice without a message."""
        self.silent.append((warning, staff_id, event_key))

    def flush(self) -> NoticeCount:
        """Queue everything collected, a table at a time; a person already told of an event is not told again."""
        if not self.pending and not self.silent:
            return self.count
        session = self.session
        warning_ids = sorted({w.id for w, *_ in self.pending} | {w.id for w, *_ in self.silent})
        told: set[tuple[int, int, str]] = set()
        for chunk in _chunks(warning_ids):
            told |= set(session.execute(select(RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key)
                                        .where(RiskNotice.warning_id.in_(chunk))).all())
        notices: list[dict] = []
        for warning, staff_id, event_key in self.silent:
            if (warning.id, staff_id, event_key) not in told:
                told.add((warning.id, staff_id, event_key))
                notices.append(self._notice(warning.id, staff_id, event_key))
        staff_ids = sorted({s for _w, s, *_ in self.pending})
        accounts: dict[int, str | None] = {}
        sent_this_week: dict[int, int] = defaultdict(int)
        for chunk in _chunks(staff_ids):
            accounts.update(dict(session.execute(
                select(Staff.id, Staff.wecom_userid).where(Staff.id.in_(chunk))).all()))
            sent_this_week.update(dict(session.execute(
                select(RiskNotice.staff_id, func.count()).where(
                    RiskNotice.staff_id.in_(chunk), RiskNotice.week == self.week, RiskNotice.bundled.is_(False),
                    RiskNotice.outbox_id.is_not(None), RiskNotice.event_key != "handled")
                .group_by(RiskNotice.staff_id)).all()))
        views = warning_views(session, self.book, list({w.id: w for w, *_ in self.pending}.values()))
        bodies: dict[str, str] = {}  # a message does not depend on its recipient: rendered once
        singles: list[tuple[dict, Draft]] = []
        bundled: dict[int, list[dict]] = defaultdict(list)
        for warning, staff_id, event_key, capped, context in self.pending:
            if (warning.id, staff_id, event_key) in told:
                continue
            told.add((warning.id, staff_id, event_key))
            userid = accounts.get(staff_id)
            if not userid:
                self.count.no_account += 1
                continue
            notice = self._notice(warning.id, staff_id, event_key)
            notices.append(notice)
            capped = capped and warning.level not in self.book.policy.cap_exempt_levels
            if capped and sent_this_week[staff_id] >= self.book.policy.weekly_cap:
                notice["bundled"] = True
                bundled[staff_id].append(notice)
                self.count.bundled += 1
                continue
            key = f"{warning.id}/{event_key}"  # the outbox period key: one message per warning event
            shown = f"{key}|{sorted(context.items())!r}"
            if shown not in bodies:
                bodies[shown] = fit(render(_template(event_key), w=views[warning.id], event=event_key, **context))
            singles.append((notice, Draft(userid, PURPOSE, key, bodies[shown])))
            if capped:
                sent_this_week[staff_id] += 1
            self.count.single += 1
        drafts = [d for _n, d in singles]
        ids = enqueue_many(session, drafts)
        # Queued before (a notice lost with a rolled-back run, or a concurrent twin): the same row.
        ids |= queued_ids(session, [d.key for d in drafts if d.key not in ids])
        for notice, draft in singles:
            notice["outbox_id"] = ids.get(draft.key)
        targets = self._bundle_targets({s: accounts[s] or "" for s in bundled})
        for staff_id, rows in bundled.items():
            for notice in rows:
                notice["outbox_id"] = targets[staff_id]
        written = _write_notices(session, notices)
        if bundled:
            mine = {(w, s, k): i for i, w, s, k in written}
            self._fill_bundles({s: targets[s] for s in bundled}, accounts, {
                s: [mine[(n["warning_id"], s, n["event_key"])] for n in rows
                    if (n["warning_id"], s, n["event_key"]) in mine] for s, rows in bundled.items()})
        self.pending.clear()
        self.silent.clear()
        return self.count

    def _notice(self, warning_id: int, staff_id: int, event_key: str) -> dict:
        return dict(warning_id=warning_id, staff_id=staff_id, event_key=event_key, week=self.week, bundled=False,
                    outbox_id=None)

    def _bundle_targets(self, userids: dict[int, str]) -> dict[int, int]:
        """staff id → the bundle their capped notices join: this week's pending one, or a new one."""
        if not userids:
            return {}
        pending: dict[str, int] = {}
        made: dict[str, int] = defaultdict(int)
        for chunk in _chunks(sorted(set(userids.values()))):
            for oid, userid, status in self.session.execute(
                    select(OutboxMessage.id, OutboxMessage.recipient, OutboxMessage.status).where(
                        OutboxMessage.recipient.in_(chunk), OutboxMessage.purpose == BUNDLE_PURPOSE,
                        OutboxMessage.period_key.like(f"{self.week}%"))):
                made[userid] += 1
                if status == "pending":
                    pending[userid] = max(oid, pending.get(userid, 0))
        out = {s: pending[u] for s, u in userids.items() if u in pending}
        out |= self._new_bundles({s: u for s, u in userids.items() if u not in pending}, made)
        return out

    def _new_bundles(self, userids: dict[int, str], made: dict[str, int]) -> dict[int, int]:
        """A new bundle per person: this week's key, then #2, #3 … after the ones already made."""
        out: dict[int, int] = {}
        while userids:
            drafts = {s: Draft(u, BUNDLE_PURPOSE, self.week if not made[u] else f"{self.week}#{made[u] + 1}", "…")
                      for s, u in userids.items()}
            ids = enqueue_many(self.session, list(drafts.values()))
            out |= {s: ids[d.key] for s, d in drafts.items() if d.key in ids}
            # A concurrent writer took the key first: the one after it, then.
            userids = {s: u for s, u in userids.items() if s not in out}
            for u in userids.values():
                made[u] += 1
        return out

    def _fill_bundles(self, targets: dict[int, int], accounts: dict[int, str | None],
                      mine: dict[int, list[int]]) -> None:
        """Write each bundle's body; one a delivery claimed meanwhile keeps its body, and this run's
        notices move to a new bundle."""
        bodies = self._bundle_bodies(sorted(set(targets.values())))
        claimed = []
        for staff_id, oid in targets.items():
            # Only while still pending: a delivery that claimed it meanwhile keeps its body.
            if self.session.execute(update(OutboxMessage).where(
                    OutboxMessage.id == oid, OutboxMessage.status == "pending")
                    .values(body=bodies[oid])).rowcount != 1:
                claimed.append(staff_id)
        if not claimed:
            return
        made: dict[str, int] = defaultdict(int)
        for (userid,) in self.session.execute(select(OutboxMessage.recipient).where(
                OutboxMessage.recipient.in_([accounts[s] for s in claimed]), OutboxMessage.purpose == BUNDLE_PURPOSE,
                OutboxMessage.period_key.like(f"{self.week}%"))):
            made[userid] += 1
        fresh = self._new_bundles({s: accounts[s] or "" for s in claimed}, made)
        for staff_id, oid in fresh.items():
            self.session.execute(update(RiskNotice).where(RiskNotice.id.in_(mine[staff_id])).values(outbox_id=oid))
        bodies = self._bundle_bodies(sorted(fresh.values()))
        for oid in fresh.values():
            self.session.execute(update(OutboxMessage).where(OutboxMessage.id == oid).values(body=bodies[oid]))

    def _bundle_bodies(self, outbox_ids: Sequence[int]) -> dict[int, str]:
        """Each bundle as its person may read it now (a warning that became sensitive since is left out)."""
        session = self.session
        staff_of: dict[int, int] = {}
        listed: dict[int, list[int]] = defaultdict(list)
        for chunk in _chunks(outbox_ids):
            for oid, staff_id, wid in session.execute(
                    select(RiskNotice.outbox_id, RiskNotice.staff_id, RiskNotice.warning_id)
                    .where(RiskNotice.outbox_id.in_(chunk)).order_by(RiskNotice.id)):
                staff_of[oid] = staff_id
                if wid not in listed[oid]:
                    listed[oid].append(wid)
        ids = sorted({w for ws in listed.values() for w in ws})
        relation: dict[tuple[int, int], str] = {}
        warnings: dict[int, RiskWarning] = {}
        for chunk in _chunks(ids):
            for wid, staff_id, rel in session.execute(select(
                    RiskWarningRecipient.warning_id, RiskWarningRecipient.staff_id, RiskWarningRecipient.relation)
                    .where(RiskWarningRecipient.warning_id.in_(chunk))):
                relation[(wid, staff_id)] = rel
            warnings.update({w.id: w for w in session.scalars(select(RiskWarning).where(RiskWarning.id.in_(chunk)))})
        shown = {oid: [w for w in listed[oid] if may_see(warnings[w], relation.get((w, staff_of[oid]), ""))]
                 for oid in listed}
        visible = sorted({w for ws in shown.values() for w in ws})
        views = warning_views(session, self.book, [warnings[w] for w in visible])
        return {oid: _fit_list("push/warning_bundle.txt", [views[w] for w in ws], cap=self.book.policy.weekly_cap)
                for oid, ws in shown.items()}


def _write_notices(session: Session, rows: list[dict]) -> list[tuple[int, int, int, str]]:
    """Insert notices (one told concurrently already is skipped); (id, warning, staff, event) of those written."""
    written = insert_rows(session, RiskNotice, rows, skip_conflicts=True, returning=(
        RiskNotice.id, RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key))
    return [tuple(r) for r in written]


def _template(event_key: str) -> str:
    """opened → push/warning_opened.txt, raised:严重 → push/warning_raised.txt, flag:7 → …_flagged.txt."""
    kind = event_key.split(":", 1)[0]
    return f"push/warning_{'flagged' if kind == 'flag' else kind}.txt"


def _fit_list(template: str, items: list, **context: object) -> str:
    """Render a list message with as many items as fit in one WeCom message (…另有 N 条)."""
    def attempt(n: int) -> str:
        return render(template, items=items[:n], more=len(items) - n, **context)

    def fits(body: str) -> bool:
        return len(body.encode("utf-8")) <= MESSAGE_LIMIT

    body = attempt(len(items))
    if fits(body) or len(items) <= 1:
        return fit(body)
    # One item fewer is always shorter: the most that fit, found by halving (a bundle can list dozens).
    low, high = 1, len(items) - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(attempt(mid)) else (low, mid - 1)
    return fit(attempt(low))


# ── applying findings ────────────────────────────────────────────────────────

@dataclass
class Outcome:
    """What an evaluation did, for a job's one-line result."""

    students: int = 0
    opened: int = 0
    raised: int = 0
    evidence: int = 0
    held_back: int = 0
    notices: NoticeCount = field(default_factory=NoticeCount)

    def line(self) -> str:
        return (f"{self.opened} opened, {self.raised} raised, {self.evidence} updated, "
                f"{self.held_back} held back (cooldown or known evidence); "
                f"queued {self.notices.single} messages, {self.notices.bundled} bundled"
                + (f", {self.notices.no_account} people without WeCom account" if self.notices.no_account else ""))


@dataclass
class _Known:
    """The newest evidence of a rule on a warning: its signature and level."""

    signature: str | None
    level: str | None
    texts: list[str]


def _known_evidence(session: Session, warning_ids: Sequence[int]) -> dict[int, dict[str, _Known]]:
    """warning → rule → its newest evidence event."""
    out: dict[int, dict[str, _Known]] = defaultdict(dict)
    for chunk in _chunks(sorted(set(warning_ids))):
        rows = session.execute(
            select(RiskWarningEvent.warning_id, RiskWarningEvent.rule_id, RiskWarningEvent.signature,
                   RiskWarningEvent.level, RiskWarningEvent.evidence)
            .where(RiskWarningEvent.warning_id.in_(chunk), RiskWarningEvent.rule_id.is_not(None),
                   RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
            .order_by(RiskWarningEvent.id))
        for wid, rid, sig, level, evidence in rows:
            texts = [e["text"] for e in json.loads(evidence)] if evidence else []
            out[wid][rid] = _Known(sig, level, texts)
    return out


def _recent_closures(session: Session, rule_ids: Sequence[str], students: Sequence[int] | None,
                     now: datetime) -> dict[tuple[int, str], tuple[datetime, str, str | None]]:
    """(student, rule) → (closed_at, level, signature) of the newest closed warning the rule fed."""
    since = now - timedelta(days=CLOSED_LOOKBACK_DAYS)
    query = (select(RiskWarning.student_id, RiskWarningEvent.rule_id, RiskWarning.closed_at, RiskWarningEvent.level,
                    RiskWarningEvent.signature)
             .join(RiskWarning, RiskWarning.id == RiskWarningEvent.warning_id)
             .where(RiskWarning.status != OPEN, RiskWarning.closed_at >= since,
                    RiskWarningEvent.rule_id.in_(list(rule_ids)), RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
             .order_by(RiskWarning.closed_at, RiskWarningEvent.id))
    out: dict[tuple[int, str], tuple[datetime, str, str | None]] = {}
    chunks = [None] if students is None else list(_chunks(sorted(set(students))))
    for chunk in chunks:
        q = query if chunk is None else query.where(RiskWarning.student_id.in_(chunk))
        for sid, rid, closed_at, level, sig in session.execute(q):
            out[(sid, rid)] = (_aware(closed_at), level or "关注", sig)
    return out


def _utc(value: datetime) -> datetime:
    """Stored times are UTC (SQLite keeps no offset: a local time would be read back as UTC)."""
    return _aware(value).astimezone(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _load_open(session: Session, keys: set[tuple[int, str]]) -> dict[tuple[int, str], RiskWarning]:
    students = sorted({s for s, _c in keys})
    out = {}
    for chunk in _chunks(students):
        for w in session.scalars(select(RiskWarning).where(RiskWarning.status == OPEN,
                                                           RiskWarning.student_id.in_(chunk))):
            out[(w.student_id, w.category)] = w
    return out


def _open_key(student_id: int, category: str) -> str:
    return f"{student_id}/{category}"


def _open_warnings(session: Session, rows: list[dict]) -> dict[str, RiskWarning]:
    """Insert new open warnings; open_key → each one inserted (one whose key is taken is left out)."""
    written = insert_rows(session, RiskWarning, rows, skip_conflicts=True, conflict_columns=["open_key"],
                          returning=(RiskWarning,))
    return {w.open_key: w for (w,) in written}


def _event_row(warning_id: int, kind: str, now: datetime, finding: Finding | None = None, *,
               level: str | None = None, note: str | None = None, actor_id: int | None = None,
               actor: str = "system") -> dict:
    """A warning event, as a row to insert."""
    return dict(
        warning_id=warning_id, at=now, kind=kind, level=level or (finding.level if finding else None),
        rule_id=finding.rule.id if finding else None, signature=finding.signature if finding else None,
        evidence=json.dumps([e.as_json() for e in finding.evidence], ensure_ascii=False) if finding else None,
        note=note if note is not None else (finding.note if finding else None),
        actor_id=actor_id if actor_id is not None else (finding.actor_id if finding else None),
        actor=finding.actor if finding and actor == "system" else actor,
    )


def _write_events(session: Session, rows: list[dict]) -> None:
    """Insert events in order; each row learns its id (a flag's keys its notices)."""
    ids = sorted(i for (i,) in insert_rows(session, RiskWarningEvent, rows, returning=(RiskWarningEvent.id,)))
    for row, event_id in zip(rows, ids, strict=True):
        row["id"] = event_id


def _write_recipients(session: Session, rows: list[dict]) -> None:
    """Insert routing rows (one a concurrent writer added already is skipped)."""
    insert_rows(session, RiskWarningRecipient, rows, skip_conflicts=True)


@dataclass(frozen=True)
class _Recipient:
    """A warning's routing row as evaluation needs it (id 0: written by this run)."""

    id: int
    relation: str
    escalated: bool = False


@dataclass
class _Routing:
    """Recipients and notices of the warnings being updated, loaded together."""

    recipients: dict[int, dict[int, _Recipient]] = field(default_factory=lambda: defaultdict(dict))
    told: dict[int, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))

    def load(self, session: Session, warning_ids: Sequence[int]) -> _Routing:
        for chunk in _chunks(sorted(set(warning_ids))):
            for rid, wid, staff_id, relation, escalated in session.execute(select(
                    RiskWarningRecipient.id, RiskWarningRecipient.warning_id, RiskWarningRecipient.staff_id,
                    RiskWarningRecipient.relation, RiskWarningRecipient.escalated)
                    .where(RiskWarningRecipient.warning_id.in_(chunk))):
                self.recipients[wid][staff_id] = _Recipient(rid, relation, escalated)
            for wid, staff_id, key in session.execute(select(
                    RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key)
                    .where(RiskNotice.warning_id.in_(chunk))):
                self.told[wid].add((staff_id, key))
        return self


@dataclass
class _Change:
    """What an evaluation does to one warning, kept until its events have ids."""

    warning: RiskWarning
    evidence: dict[str, _Known]
    findings: list[Finding]
    event_key: str | None  # opened | raised:严重 | None: new evidence at the same level
    flag: dict | None = None  # the event row of a flag, whose id keys its notices

    @property
    def key(self) -> str | None:
        return self.event_key or (f"flag:{self.flag['id']}" if self.flag else None)


def apply_findings(session: Session, book: RuleBook, findings: list[Finding], now: datetime, today: date,
                   notifier: Notifier | None = None) -> Outcome:
    """Open, update or raise warnings from findings; route them; collect the notices (the caller flushes).

    Every change is decided in memory first, then written a table at a time: the new warnings
    (those a concurrent writer opened meanwhile are joined instead), the events, the routing.
    """
    out = Outcome()
    notifier = notifier or Notifier(session, book, today)
    groups: dict[tuple[int, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.student_id, f.rule.category)].append(f)
    if not groups:
        return out
    open_now = _load_open(session, set(groups))
    known = _known_evidence(session, [w.id for w in open_now.values()])
    routing = _Routing().load(session, [w.id for w in open_now.values()])
    automatic = sorted({f.rule.id for f in findings if f.rule.kind != "manual"})
    students = [s for s, _c in groups]
    closures = _recent_closures(session, automatic, students if len(students) < 2000 else None, now) \
        if automatic else {}
    directory = Directory.load(session, set(students))
    # The most serious first, so that they are the ones sent alone when a weekly cap is reached.
    order = sorted(groups, key=lambda k: (-max(f.rank for f in groups[k]), k))
    ranked = {k: sorted(groups[k], key=lambda f: (-f.rank, f.rule.id)) for k in order}
    opening: dict[tuple[int, str], list[Finding]] = {}
    for key in order:
        if key not in open_now:
            kept = [f for f in ranked[key]
                    if f.rule.kind == "manual" or _may_reopen(f, closures.get((key[0], f.rule.id)), now)]
            out.held_back += len(ranked[key]) - len(kept)
            if kept:
                opening[key] = ranked[key] = kept
    evidence_of = {key: {f.rule.id: _Known(f.signature, f.level, [e.text for e in f.evidence]) for f in group}
                   for key, group in opening.items()}
    created = _open_or_join(session, book, opening, evidence_of, now, open_now, known, routing)
    events: list[dict] = []
    changes: list[_Change] = []
    for key in order:
        if key in created:
            warning, group = created[key], opening[key]
            out.opened += 1
            events.append(_event_row(warning.id, "opened", now, group[0]))
            events += [_event_row(warning.id, "evidence", now, f) for f in group[1:]]
            changes.append(_Change(warning, evidence_of[key], group, "opened"))
        elif key in open_now:
            change = _update(book, open_now[key], ranked[key], known[open_now[key].id], now, out, events)
            if change is not None:
                changes.append(change)
    _write_events(session, events)
    recipients: list[dict] = []
    for c in changes:
        _route(book, c.warning, c.evidence, directory, routing, notifier, now, c.key, c.findings, recipients)
    _write_recipients(session, recipients)
    out.notices = notifier.count
    return out


def _open_or_join(session: Session, book: RuleBook, opening: dict[tuple[int, str], list[Finding]],
                  evidence_of: dict[tuple[int, str], dict[str, _Known]], now: datetime,
                  open_now: dict[tuple[int, str], RiskWarning], known: dict[int, dict[str, _Known]],
                  routing: _Routing) -> dict[tuple[int, str], RiskWarning]:
    """Insert the new warnings; returns those inserted. Where a concurrent writer opened one a
    moment ago (the unique open_key decides), theirs joins `open_now` to be added to instead."""
    created: dict[tuple[int, str], RiskWarning] = {}
    todo = list(opening)
    for _attempt in range(3):
        inserted = _open_warnings(session, [dict(
            student_id=sid, category=category, level=opening[(sid, category)][0].level, status=OPEN,
            sensitive=any(book.is_sensitive(f.rule) for f in opening[(sid, category)]),
            open_key=_open_key(sid, category), summary=_summary(book, evidence_of[(sid, category)]),
            opened_at=now, updated_at=now) for sid, category in todo])
        created |= {k: inserted[_open_key(*k)] for k in todo if _open_key(*k) in inserted}
        taken = {k for k in todo if k not in created}
        if not taken:
            return created
        theirs = {k: w for k, w in _load_open(session, taken).items() if k in taken}
        open_now.update(theirs)
        known.update(_known_evidence(session, [w.id for w in theirs.values()]))
        routing.load(session, [w.id for w in theirs.values()])
        todo = [k for k in todo if k in taken and k not in theirs]  # closed again meanwhile: open anew
        if not todo:
            return created
    raise RuntimeError(f"could not open or find the open warning of {todo[:3]}")


def _may_reopen(f: Finding, closed: tuple[datetime, str, str | None] | None, now: datetime) -> bool:
    """After a closure the rule warns again only on changed evidence, past its cooldown or at a higher level."""
    if closed is None:
        return True
    closed_at, level, signature = closed
    if signature == f.signature:
        return False
    return f.rank > LEVELS.index(level) or now - closed_at >= timedelta(days=f.rule.cooldown_days)


def _update(book: RuleBook, warning: RiskWarning, group: list[Finding], evidence: dict[str, _Known],
            now: datetime, out: Outcome, events: list[dict]) -> _Change | None:
    """Add new evidence to an open warning and raise its level when a finding calls for more."""
    fresh = [f for f in group
             if f.rule.kind == "manual" or f.rule.id not in evidence or evidence[f.rule.id].signature != f.signature]
    if not fresh:
        return None
    top = max(fresh, key=lambda f: f.rank)
    raise_to = top.level if top.rank > LEVELS.index(warning.level) else None
    flag = None
    for f in fresh:
        kind = "flagged" if f.rule.kind == "manual" else ("raised" if raise_to and f is top else "evidence")
        events.append(_event_row(warning.id, kind, now, f))
        if kind == "flagged" and flag is None:
            flag = events[-1]
        evidence[f.rule.id] = _Known(f.signature, f.level, [e.text for e in f.evidence])
    warning.sensitive = warning.sensitive or any(book.is_sensitive(f.rule) for f in fresh)
    if raise_to:
        warning.level = raise_to
        out.raised += 1
    else:
        out.evidence += 1
    warning.summary = _summary(book, evidence)
    warning.updated_at = now
    return _Change(warning, evidence, fresh, f"raised:{raise_to}" if raise_to else None,
                   None if raise_to else flag)


def _summary(book: RuleBook, evidence: dict[str, _Known]) -> str:
    """A warning's summary: the newest evidence of each rule, the most serious rule first."""
    def rank(rid: str) -> tuple[int, str]:
        rule = book.by_id.get(rid)
        return (-(rule.rank if rule else 0), rid)

    lines = []
    for rid in sorted(evidence, key=rank):
        lines += evidence[rid].texts
    return "\n".join(dict.fromkeys(lines))


def _route(book: RuleBook, warning: RiskWarning, evidence: dict[str, _Known], directory: Directory,
           routing: _Routing, notifier: Notifier, now: datetime, event_key: str | None,
           findings: list[Finding], new_rows: list[dict]) -> None:
    """Add the recipients every contributing rule asks for (to `new_rows`), then collect their notices.

    Someone not told of the warning yet hears of it whole ("opened"); the others hear of the
    event (a raise, a new flag); new evidence at the same level tells only the newcomers.
    """
    relations = {rel for rid in evidence if rid in book.by_id for rel in book.by_id[rid].recipients}
    rows = routing.recipients[warning.id]
    recorders = frozenset().union(*(f.recorders for f in findings))
    for staff_id, relation in directory.people(warning.student_id, relations, warning.sensitive, recorders).items():
        if staff_id not in rows:
            rows[staff_id] = _Recipient(0, relation)
            new_rows.append(dict(warning_id=warning.id, staff_id=staff_id, relation=relation, escalated=False,
                                 added_at=now))
    authors = {f.actor_id for f in findings if f.actor_id is not None}
    flagged = any(f.rule.kind == "manual" for f in findings)  # a person's flag is always sent alone
    told = routing.told[warning.id]
    for staff_id, row in sorted(rows.items()):
        if not may_see(warning, row.relation) or (row.escalated and event_key is None):
            continue
        if staff_id in authors:
            # The author of a flag knows it: marked as told, without a message.
            for key in ("opened", event_key):
                if key and (staff_id, key) not in told:
                    notifier.mark_told(warning, staff_id, key)
                    told.add((staff_id, key))
            continue
        if not any(s == staff_id for s, _k in told):
            notifier.add(warning, staff_id, "opened", capped=not flagged)
        elif event_key and event_key != "opened":
            notifier.add(warning, staff_id, event_key, capped=not flagged)


# ── evaluation entry points ──────────────────────────────────────────────────

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
    for chunk in _chunks(sorted({f.student_id for f in findings}), size):
        rows = session.execute(select(ScoreEntry.student_id, ScoreEntry.recorder_id)
                               .where(*where, ScoreEntry.student_id.in_(chunk)).distinct())
        for sid, staff_id in rows:
            who[sid].add(staff_id)
    return [replace(f, recorders=frozenset(who.get(f.student_id, ()))) for f in findings]


def scan(session: Session, catalogue: Catalogue, cal: Calendar, now: datetime, today: date) -> Outcome:
    """The daily scan: every automatic rule for every student, from aggregates."""
    now = _utc(now)
    book = rule_book(catalogue)
    tune_for_aggregates(session)
    findings = find(session, book, catalogue, cal, today, book.automatic())
    notifier = Notifier(session, book, today)
    out = apply_findings(session, book, findings, now, today, notifier)
    out.students = len({f.student_id for f in findings})
    notifier.flush()
    out.notices = notifier.count
    return out


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


def evaluate_entries(session: Session, catalogue: Catalogue, cal: Calendar, entries: Sequence[ScoreEntry],
                     now: datetime, today: date) -> Outcome:
    """Right after a recording: the rules whose points (or trend domain) it touched, for its students."""
    now = _utc(now)
    book = rule_book(catalogue)
    students = sorted({e.student_id for e in entries if e.student_id})
    rules = rules_touched(book, catalogue, entries)
    if not students or not rules:
        return Outcome()
    notifier = Notifier(session, book, today)
    out = apply_findings(session, book, find(session, book, catalogue, cal, today, rules, students),
                         now, today, notifier)
    notifier.flush()
    out.notices = notifier.count
    return out


# ── people acting on warnings ────────────────────────────────────────────────

@dataclass(frozen=True)
class Person:
    """A staff member acting in chat: id, display and audit names, and their relation label."""

    staff_id: int
    name: str
    audit_name: str
    role: str = ""


def raise_flag(session: Session, catalogue: Catalogue, student: Student, category: Category, level: str | None,
               note: str, author: Person, now: datetime, today: date) -> tuple[RiskWarning, bool, list[str]]:
    """A manual flag: opens the category's warning or adds to the open one; returns it, whether new,
    and the names of the people it is routed to."""
    now = _utc(now)
    book = rule_book(catalogue)
    rule = book.manual(category.name)
    role = f"（{author.role}）" if author.role else ""
    evidence = Evidence(None, f"{author.name}{role}{today:%m-%d} 提出：{note}", today,
                        f"flag:{author.staff_id}:{now.isoformat()}")
    finding = Finding(student.id, rule, level or rule.level, (evidence,), actor_id=author.staff_id,
                      actor=author.audit_name, note=note)
    existing = session.scalar(select(RiskWarning).where(RiskWarning.open_key == _open_key(student.id, category.name)))
    notifier = Notifier(session, book, today)
    apply_findings(session, book, [finding], now, today, notifier)
    notifier.flush()
    warning = session.scalar(select(RiskWarning).where(RiskWarning.open_key == _open_key(student.id, category.name)))
    assert warning is not None
    return warning, existing is None, routed_names(session, warning)


def routed_names(session: Session, warning: RiskWarning) -> list[str]:
    """名字（关系） of everyone a warning is routed to who may see it."""
    rows = session.execute(select(Staff.name, RiskWarningRecipient.relation).join(
        Staff, Staff.id == RiskWarningRecipient.staff_id).where(RiskWarningRecipient.warning_id == warning.id)
        .order_by(RiskWarningRecipient.id)).all()
    return [f"{name}（{relation}）" for name, relation in rows if may_see(warning, relation)]


def recipient(session: Session, warning: RiskWarning, staff_id: int) -> RiskWarningRecipient | None:
    """The person's routing row if the warning is theirs to act on (privacy included)."""
    row = session.scalar(select(RiskWarningRecipient).where(
        RiskWarningRecipient.warning_id == warning.id, RiskWarningRecipient.staff_id == staff_id))
    return row if row is not None and may_see(warning, row.relation) else None


def close_warning(session: Session, catalogue: Catalogue, warning: RiskWarning, person: Person, note: str,
                  false_alarm: bool, now: datetime, today: date) -> list[int]:
    """处理 / 误报: record the action, close the warning, tell the flags' authors; returns whom it told."""
    now = _utc(now)
    book = rule_book(catalogue)
    kind = FALSE_ALARM if false_alarm else HANDLED
    warning.status = kind
    warning.open_key = None
    warning.closed_at = now
    warning.closed_by = person.staff_id
    warning.close_note = note
    warning.updated_at = now
    _write_events(session, [_event_row(warning.id, kind, now, level=warning.level, note=note,
                                       actor_id=person.staff_id, actor=person.audit_name)])
    manual = [r.id for r in book.rules if r.kind == "manual"]
    authors = sorted(set(session.scalars(select(RiskWarningEvent.actor_id).where(
        RiskWarningEvent.warning_id == warning.id, RiskWarningEvent.rule_id.in_(manual),
        RiskWarningEvent.actor_id.is_not(None)))) - {person.staff_id})
    notifier = Notifier(session, book, today)
    for staff_id in authors:
        notifier.add(warning, staff_id, "handled", capped=False, handler=person.name, note=note,
                     false_alarm=false_alarm)
    notifier.flush()
    return authors


def escalate(session: Session, catalogue: Catalogue, now: datetime, today: date) -> tuple[int, NoticeCount]:
    """Open warnings past the escalation delay go to the department's 学工办 and 系部主任 (not sensitive)."""
    now = _utc(now)
    book = rule_book(catalogue)
    due = now - timedelta(days=book.policy.escalate_after_days)
    warnings = list(session.scalars(select(RiskWarning).where(
        RiskWarning.status == OPEN, RiskWarning.escalated_at.is_(None), RiskWarning.opened_at <= due,
        RiskWarning.level.in_(book.policy.escalate_levels)).order_by(RiskWarning.id)))
    if not warnings:
        return 0, NoticeCount()
    directory = Directory.load(session, {w.student_id for w in warnings})
    routing = _Routing().load(session, [w.id for w in warnings])
    names = _staff_names(session, {s for rows in routing.recipients.values() for s in rows})
    notifier = Notifier(session, book, today)
    events: list[dict] = []
    recipients: list[dict] = []
    for warning in sorted(warnings, key=lambda w: (-LEVELS.index(w.level), w.id)):
        days = (now - _aware(warning.opened_at)).days
        rows = routing.recipients[warning.id]
        before = [f"{names.get(s, '')}（{r.relation}）" for s, r in sorted(rows.items(), key=lambda i: i[1].id)
                  if may_see(warning, r.relation)]
        warning.escalated_at = now
        office_names = "学工办" if warning.sensitive else "学工办、系部主任"
        events.append(_event_row(warning.id, "escalated", now, level=warning.level,
                                 note=f"{days} 天未处理，转{office_names}督办"))
        office = directory.people(warning.student_id, ("学工办", "系部主任"), warning.sensitive)
        for staff_id, relation in office.items():
            if staff_id not in rows:
                recipients.append(dict(warning_id=warning.id, staff_id=staff_id, relation=relation, escalated=True,
                                       added_at=now))
            notifier.add(warning, staff_id, "escalated", days=days, routed=before)
    _write_events(session, events)
    _write_recipients(session, recipients)
    notifier.flush()
    return len(warnings), notifier.count


def _staff_names(session: Session, staff_ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in _chunks(sorted(staff_ids)):
        out.update(dict(session.execute(select(Staff.id, Staff.name).where(Staff.id.in_(chunk))).all()))
    return out


# ── reading ──────────────────────────────────────────────────────────────────

def open_warnings_for(session: Session, staff_id: int) -> list[RiskWarning]:
    """Open warnings routed or escalated to a person (sensitive ones only through a sensitive relation)."""
    rows = session.execute(select(RiskWarning, RiskWarningRecipient.relation).join(
        RiskWarningRecipient, RiskWarningRecipient.warning_id == RiskWarning.id).where(
        RiskWarningRecipient.staff_id == staff_id, RiskWarning.status == OPEN)).all()
    found = [w for w, relation in rows if may_see(w, relation)]
    return sorted(found, key=lambda w: (-LEVELS.index(w.level), w.opened_at, w.id))


@dataclass(frozen=True)
class HistoryLine:
    """One warning on the staff view of a card."""

    id: int
    opened_on: date
    category: str
    level: str
    status: str  # open | handled | false_alarm
    closed_on: date | None
    closed_by: str | None
    note: str | None
    headline: str


def warning_history(session: Session, catalogue: Catalogue, student_id: int, view: View) -> list[HistoryLine]:
    """A student's warnings a viewer may see: the categories of the domains they see; sensitive
    warnings only to those who see sensitive points."""
    book = rule_book(catalogue)
    if not view.domains:
        return []
    visible = [c.name for c in book.categories.values() if c.domain in view.domains]
    query = select(RiskWarning, Staff.name).outerjoin(Staff, Staff.id == RiskWarning.closed_by).where(
        RiskWarning.student_id == student_id, RiskWarning.category.in_(visible))
    if not view.sensitive:
        query = query.where(RiskWarning.sensitive.is_(False))
    rows = session.execute(query.order_by((RiskWarning.status == OPEN).desc(), RiskWarning.opened_at.desc(),
                                          RiskWarning.id.desc()).limit(book.policy.history_on_card)).all()
    return [HistoryLine(w.id, local(w.opened_at).date(), w.category, w.level, w.status,
                        local(w.closed_at).date() if w.closed_at else None, name, w.close_note,
                        (w.summary.splitlines() or [""])[0]) for w, name in rows]


def history(session: Session, warning: RiskWarning) -> list[RiskWarningEvent]:
    """A warning's events, oldest first."""
    return list(session.scalars(select(RiskWarningEvent).where(RiskWarningEvent.warning_id == warning.id)
                                .order_by(RiskWarningEvent.id)))


# ── measures for the digest ──────────────────────────────────────────────────

@dataclass(frozen=True)
class FirstAction:
    """How long a warning waited for its first action (处理 or 误报); None while nobody acted."""

    warning_id: int
    category: str
    level: str
    opened_at: datetime
    acted_at: datetime | None

    @property
    def hours(self) -> float | None:
        return None if self.acted_at is None else (self.acted_at - self.opened_at).total_seconds() / 3600


@dataclass(frozen=True)
class Share:
    """A share with its counts (share is None when nothing counts)."""

    hits: int
    total: int

    @property
    def share(self) -> float | None:
        return self.hits / self.total if self.total else None


def time_to_first_action(session: Session, since: datetime, until: datetime) -> list[FirstAction]:
    """Every warning opened in [since, until) with the time of its first action by `until`, if any."""
    first = (select(RiskWarningEvent.warning_id, func.min(RiskWarningEvent.at).label("at"))
             .where(RiskWarningEvent.kind.in_(ACTION_KINDS)).group_by(RiskWarningEvent.warning_id).subquery())
    rows = session.execute(
        select(RiskWarning.id, RiskWarning.category, RiskWarning.level, RiskWarning.opened_at, first.c.at)
        .outerjoin(first, first.c.warning_id == RiskWarning.id)
        .where(RiskWarning.opened_at >= since, RiskWarning.opened_at < until).order_by(RiskWarning.id)).all()
    # As of `until`: an action taken later does not count yet.
    return [FirstAction(wid, cat, level, _aware(opened), _aware(at) if at and _aware(at) <= until else None)
            for wid, cat, level, opened, at in rows]


def handled_within(session: Session, since: datetime, until: datetime, hours: float = 72) -> Share:
    """Of the warnings opened in [since, until) whose deadline has passed by `until` (or that were
    acted on already), the share acted on within `hours`."""
    hits = total = 0
    for item in time_to_first_action(session, since, until):
        if item.acted_at is None and item.opened_at + timedelta(hours=hours) > until:
            continue  # still within its time: neither late nor on time yet
        total += 1
        hits += item.hours is not None and item.hours <= hours
    return Share(hits, total)


def false_alarm_shares(session: Session, since: datetime, until: datetime) -> dict[str, Share]:
    """Per rule: of the closed warnings (closed in [since, until)) it gave evidence to, the share marked 误报.

    1 − share is the rule's precision as the people acting on it judged it.
    """
    rows = session.execute(
        select(RiskWarningEvent.rule_id, RiskWarning.id, RiskWarning.status)
        .join(RiskWarning, RiskWarning.id == RiskWarningEvent.warning_id)
        .where(RiskWarning.status != OPEN, RiskWarning.closed_at >= since, RiskWarning.closed_at < until,
               RiskWarningEvent.rule_id.is_not(None), RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
        .distinct()).all()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rid, _wid, status in rows:
        counts[rid][1] += 1
        counts[rid][0] += status == FALSE_ALARM
    return {rid: Share(h, t) for rid, (h, t) in sorted(counts.items())}


@dataclass(frozen=True)
class WarningMeasures:
    """The three measures the digest reports for a period."""

    first_actions: list[FirstAction]
    within_72h: Share
    false_alarms: dict[str, Share]


def warning_measures(session: Session, since: datetime, until: datetime) -> WarningMeasures:
    """Time to first action per warning, share handled within 72 h, false-alarm share per rule."""
    return WarningMeasures(time_to_first_action(session, since, until), handled_within(session, since, until),
                           false_alarm_shares(session, since, until))


@lru_cache(maxsize=1)
def local_zone() -> ZoneInfo:
    """APP_TIMEZONE, for showing stored (UTC) times as people read them."""
    return ZoneInfo(os.environ.get("APP_TIMEZONE") or "Asia/Shanghai")


def local(value: datetime) -> datetime:
    return _aware(value).astimezone(local_zone())


def moment(today: date) -> datetime:
    """A handler's clock: now, or noon of `today` when the service runs on a fixed clock (tests)."""
    now = utcnow()
    if local(now).date() == today:
        return now
    return datetime.combine(today, time(12, 0), local_zone()).astimezone(UTC)

