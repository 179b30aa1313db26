"""Early warnings (预警): rules as data, evaluation from aggregates, routing that respects privacy,
escalation, closing the loop, and the measures the digest reports.

The rules live in `risk_rules.toml` (documented there). Evaluation is set-based: one aggregate
per (student, point) over each rule's window, from a few GROUP BY queries, then pure matching
in Python; the same code serves the daily scan (every student) and the check right after a
recording (the students recorded). One warning is open per (student, category): new evidence
updates it and may raise its level, never opens a twin. Messages go through the outbox; a
`RiskNotice` row per (warning, person, event) makes every rerun send nothing new.
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

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from bot.templating import render
from models.authz import View
from models.catalogue import Catalogue, ScorePoint, normalise
from models.db import tune_for_aggregates
from models.expected import is_final_year
from models.outbox import enqueue
from models.periods import UNIT_OF_PERIOD, Calendar, unit_bounds, week_key
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


@dataclass(frozen=True)
class Aggregate:
    """One student's point over a window: how many values, their total and mean, the newest."""

    n: int
    total: float
    mean: float
    last_on: date | None
    latest: float | None = None

    def measure(self, name: str) -> float | None:
        return {"mean": self.mean, "sum": self.total, "latest": self.latest, "count": float(self.n)}[name]


def replaces(point: ScorePoint) -> bool:
    """A point whose newer entry replaces the older one in the same period (not counts, not sessions)."""
    return not (point.accumulates or point.is_observation)


def aggregates(session: Session, catalogue: Catalogue, codes: Iterable[str], start: date, end: date,
               students: Sequence[int] | None = None,
               semesters: Sequence[str] | None = None) -> dict[tuple[int, str], Aggregate]:
    """Aggregates per (student, point) over [start, end], from at most three GROUP BY queries.

    Session observations and counts aggregate every live entry; other points keep the newest
    entry of each period (as the card does), then average those, and `latest` is the newest.
    `semesters` (the keys of the terms the window overlaps) lets the database skip older years.
    """
    codes = sorted(set(codes))
    if not codes or (students is not None and not students):
        return {}

    def where(code_set: list[str]) -> list:
        conds = [ScoreEntry.revoked_at.is_(None), ScoreEntry.student_id.is_not(None),
                 ScoreEntry.point_code.in_(code_set), ScoreEntry.occurred_on >= start,
                 ScoreEntry.occurred_on <= end]
        if students is not None:
            conds.append(ScoreEntry.student_id.in_(list(students)))
        if semesters is not None:
            conds.append(ScoreEntry.semester_key.in_(list(semesters)))  # indexed: years of history skipped
        return conds

    plain = [c for c in codes if not replaces(catalogue.by_code[c])]
    replaced = [c for c in codes if replaces(catalogue.by_code[c])]
    out: dict[tuple[int, str], Aggregate] = {}
    if plain:
        rows = session.execute(
            select(ScoreEntry.student_id, ScoreEntry.point_code, func.count(), func.sum(ScoreEntry.value),
                   func.max(ScoreEntry.occurred_on))
            .where(*where(plain)).group_by(ScoreEntry.student_id, ScoreEntry.point_code))
        for sid, code, n, total, last_on in rows:
            out[(sid, code)] = Aggregate(n, float(total), float(total) / n, _as_date(last_on))
    if replaced:
        entry = aliased(ScoreEntry)
        per_period = (select(func.max(ScoreEntry.id).label("id")).where(*where(replaced))
                      .group_by(ScoreEntry.student_id, ScoreEntry.point_code, ScoreEntry.period_key).subquery())
        rows = session.execute(
            select(entry.student_id, entry.point_code, func.count(), func.sum(entry.value), func.max(entry.occurred_on))
            .join(per_period, entry.id == per_period.c.id).group_by(entry.student_id, entry.point_code))
        partial = {(sid, code): (n, float(total), _as_date(last_on)) for sid, code, n, total, last_on in rows}
        newest = (select(func.max(ScoreEntry.id).label("id")).where(*where(replaced))
                  .group_by(ScoreEntry.student_id, ScoreEntry.point_code).subquery())
        latest_rows = session.execute(
            select(entry.student_id, entry.point_code, entry.value).join(newest, entry.id == newest.c.id))
        latest = {(sid, code): float(value) for sid, code, value in latest_rows}
        for key, (n, total, last_on) in partial.items():
            out[key] = Aggregate(n, total, total / n, last_on, latest.get(key))
    return out


def _as_date(value: object) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def point_value(point: ScorePoint, agg: Aggregate) -> float | None:
    """The value of a point over a window as the card would read it."""
    if point.is_observation or (replaces(point) and UNIT_OF_PERIOD[point.period] in ("week", "month")):
        return agg.mean
    if point.accumulates:
        return agg.total
    return agg.latest


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
    """Evidence text for a point's measure: 全勤率 近4周 85%（3周均值，至11-14）."""
    value = agg.measure(measure)
    assert value is not None
    last = f"{agg.last_on:%m-%d}" if agg.last_on else "—"
    shown = point.display_value(value)
    if measure == "mean":
        unit = "次课" if point.is_observation else ("周" if UNIT_OF_PERIOD[point.period] == "week" else "个月")
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
    hits: dict[int, list[Evidence]] = defaultdict(list)
    points = set(rule.points)
    for (sid, code), agg in sorted(aggs.items()):
        if code not in points or (eligible is not None and sid not in eligible) or agg.n < rule.min_count:
            continue
        value = agg.measure(rule.when.measure)
        if value is not None and rule.when.holds(value):
            hits[sid].append(describe(catalogue.by_code[code], rule.when.measure, agg, rule.window))
    return [Finding(sid, rule, rule.level, tuple(ev)) for sid, ev in sorted(hits.items())]


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
    codes = {p.code for p in trend_points(catalogue, rule.domain)}
    now_values: dict[int, dict[str, float]] = defaultdict(dict)
    then_values: dict[int, dict[str, float]] = defaultdict(dict)
    for source, target in ((recent, now_values), (before, then_values)):
        for (sid, code), agg in source.items():
            if code in codes and (value := point_value(catalogue.by_code[code], agg)) is not None:
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
    """Collects who must hear of which warning event, then queues it: alone under the weekly cap,
    beyond it in one bundle per person (appended to while it is still pending)."""

    def __init__(self, session: Session, book: RuleBook, today: date) -> None:
        self.session = session
        self.book = book
        self.today = today
        self.week = week_key(today)
        self.pending: list[tuple[RiskWarning, int, str, bool, dict]] = []
        self.count = NoticeCount()

    def add(self, warning: RiskWarning, staff_id: int, event_key: str, *, capped: bool = True,
            **context: object) -> None:
        self.pending.append((warning, staff_id, event_key, capped, context))

    def flush(self) -> NoticeCount:
        """Queue everything collected; a person already told of an event is not told again."""
        if not self.pending:
            return self.count
        session = self.session
        warning_ids = sorted({w.id for w, *_ in self.pending})
        told: set[tuple[int, int, str]] = set()
        for chunk in _chunks(warning_ids):
            told |= set(session.execute(select(RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key)
                                        .where(RiskNotice.warning_id.in_(chunk))).all())
        staff_ids = sorted({s for _w, s, *_ in self.pending})
        accounts = {}
        for chunk in _chunks(staff_ids):
            accounts.update(dict(session.execute(
                select(Staff.id, Staff.wecom_userid).where(Staff.id.in_(chunk))).all()))
        sent_this_week: dict[int, int] = defaultdict(int)
        for chunk in _chunks(staff_ids):
            sent_this_week.update(dict(session.execute(
                select(RiskNotice.staff_id, func.count()).where(
                    RiskNotice.staff_id.in_(chunk), RiskNotice.week == self.week, RiskNotice.bundled.is_(False),
                    RiskNotice.outbox_id.is_not(None), RiskNotice.event_key != "handled")
                .group_by(RiskNotice.staff_id)).all()))
        views = warning_views(session, self.book, list({w.id: w for w, *_ in self.pending}.values()))
        bundles: dict[int, list[RiskNotice]] = defaultdict(list)
        for warning, staff_id, event_key, capped, context in self.pending:
            if (warning.id, staff_id, event_key) in told:
                continue
            told.add((warning.id, staff_id, event_key))
            userid = accounts.get(staff_id)
            if not userid:
                self.count.no_account += 1
                continue
            notice = RiskNotice(warning_id=warning.id, staff_id=staff_id, event_key=event_key, week=self.week)
            capped = capped and warning.level not in self.book.policy.cap_exempt_levels
            if capped and sent_this_week[staff_id] >= self.book.policy.weekly_cap:
                notice.bundled = True
                session.add(notice)
                bundles[staff_id].append(notice)
                self.count.bundled += 1
                continue
            body = fit(render(_template(event_key), w=views[warning.id], event=event_key, **context))
            row = enqueue(session, userid, PURPOSE, f"{warning.id}/{event_key}", body)
            if row is None:  # queued before (a notice lost with a rolled-back run): find it
                row = session.scalar(select(OutboxMessage).where(
                    OutboxMessage.recipient == userid, OutboxMessage.purpose == PURPOSE,
                    OutboxMessage.period_key == f"{warning.id}/{event_key}"))
            notice.outbox_id = row.id if row is not None else None
            session.add(notice)
            if capped:
                sent_this_week[staff_id] += 1
            self.count.single += 1
        session.flush()
        for staff_id, notices in bundles.items():
            self._bundle(accounts[staff_id], staff_id, notices)
        self.pending.clear()
        return self.count

    def _bundle(self, userid: str, staff_id: int, notices: list[RiskNotice]) -> None:
        """Add notices to this week's pending bundle for the person, or start a new one."""
        session = self.session
        pending = session.scalar(select(OutboxMessage).where(
            OutboxMessage.recipient == userid, OutboxMessage.purpose == BUNDLE_PURPOSE,
            OutboxMessage.period_key.like(f"{self.week}%"), OutboxMessage.status == "pending")
            .order_by(OutboxMessage.id.desc()).limit(1))
        if pending is not None:
            for n in notices:
                n.outbox_id = pending.id
            session.flush()
            body = self._bundle_body(pending.id)
            # Only while still pending: a delivery that claimed it meanwhile keeps its body.
            if session.execute(update(OutboxMessage).where(
                    OutboxMessage.id == pending.id, OutboxMessage.status == "pending")
                    .values(body=body)).rowcount == 1:
                session.expire(pending, ["body"])
                return
        sent = session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.recipient == userid, OutboxMessage.purpose == BUNDLE_PURPOSE,
            OutboxMessage.period_key.like(f"{self.week}%")))
        row = None
        while row is None:  # a concurrent writer may take the next key first: then the one after
            key = self.week if not sent else f"{self.week}#{sent + 1}"
            row = enqueue(session, userid, BUNDLE_PURPOSE, key, "…")
            sent += 1
        for n in notices:
            n.outbox_id = row.id
        session.flush()
        row.body = self._bundle_body(row.id)

    def _bundle_body(self, outbox_id: int) -> str:
        """The bundle as the person may read it now (a warning that became sensitive since is left out)."""
        notices = self.session.scalars(select(RiskNotice).where(RiskNotice.outbox_id == outbox_id)
                                       .order_by(RiskNotice.id)).all()
        staff_id = notices[0].staff_id
        ids = list(dict.fromkeys(n.warning_id for n in notices))
        relation = dict(self.session.execute(select(RiskWarningRecipient.warning_id, RiskWarningRecipient.relation)
                                             .where(RiskWarningRecipient.warning_id.in_(ids),
                                                    RiskWarningRecipient.staff_id == staff_id)).all())
        warnings = {w.id: w for w in self.session.scalars(select(RiskWarning).where(RiskWarning.id.in_(ids)))
                    if may_see(w, relation.get(w.id, ""))}
        ids = [i for i in ids if i in warnings]
        views = warning_views(self.session, self.book, [warnings[i] for i in ids])
        items = [views[i] for i in ids]
        return _fit_list("push/warning_bundle.txt", items, cap=self.book.policy.weekly_cap)


def _template(event_key: str) -> str:
    """opened → push/warning_opened.txt, raised:严重 → push/warning_raised.txt, flag:7 → …_flagged.txt."""
    kind = event_key.split(":", 1)[0]
    return f"push/warning_{'flagged' if kind == 'flag' else kind}.txt"


def _fit_list(template: str, items: list, **context: object) -> str:
    """Render a list message with as many items as fit in one WeCom message (…另有 N 条)."""
    def attempt(n: int) -> str:
        return render(template, items=items[:n], more=len(items) - n, **context)

    body = attempt(len(items))
    n = len(items)
    while n > 1 and len(body.encode("utf-8")) > MESSAGE_LIMIT:
        n -= 1
        body = attempt(n)
    return fit(body)


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


def _insert_warning(session: Session, student_id: int, category: str, level: str, sensitive: bool,
                    now: datetime) -> tuple[RiskWarning, bool]:
    """A new open warning, or the open one a concurrent writer just created (the unique key decides)."""
    warning = RiskWarning(student_id=student_id, category=category, level=level, sensitive=sensitive,
                          open_key=_open_key(student_id, category), opened_at=now, updated_at=now, summary="")
    try:
        with session.begin_nested():
            session.add(warning)
    except IntegrityError:
        existing = session.scalar(select(RiskWarning).where(RiskWarning.open_key == _open_key(student_id, category)))
        if existing is None:
            raise
        return existing, False
    return warning, True


def _event(session: Session, warning: RiskWarning, kind: str, now: datetime, finding: Finding | None = None,
           *, level: str | None = None, note: str | None = None, actor_id: int | None = None,
           actor: str = "system") -> RiskWarningEvent:
    event = RiskWarningEvent(
        warning_id=warning.id, at=now, kind=kind, level=level or (finding.level if finding else None),
        rule_id=finding.rule.id if finding else None, signature=finding.signature if finding else None,
        evidence=json.dumps([e.as_json() for e in finding.evidence], ensure_ascii=False) if finding else None,
        note=note if note is not None else (finding.note if finding else None),
        actor_id=actor_id if actor_id is not None else (finding.actor_id if finding else None),
        actor=finding.actor if finding and actor == "system" else actor,
    )
    session.add(event)
    return event


@dataclass
class _Routing:
    """Recipients and notices of the warnings being updated, loaded together."""

    recipients: dict[int, dict[int, RiskWarningRecipient]] = field(default_factory=lambda: defaultdict(dict))
    told: dict[int, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))

    def load(self, session: Session, warning_ids: Sequence[int]) -> _Routing:
        for chunk in _chunks(sorted(set(warning_ids))):
            for row in session.scalars(select(RiskWarningRecipient).where(RiskWarningRecipient.warning_id.in_(chunk))):
                self.recipients[row.warning_id][row.staff_id] = row
            for wid, staff_id, key in session.execute(select(
                    RiskNotice.warning_id, RiskNotice.staff_id, RiskNotice.event_key)
                    .where(RiskNotice.warning_id.in_(chunk))):
                self.told[wid].add((staff_id, key))
        return self


def apply_findings(session: Session, book: RuleBook, findings: list[Finding], now: datetime, today: date,
                   notifier: Notifier | None = None) -> Outcome:
    """Open, update or raise warnings from findings; route them; collect the notices (the caller flushes)."""
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
    for key in order:
        sid, category = key
        group = sorted(groups[key], key=lambda f: (-f.rank, f.rule.id))
        warning = open_now.get(key)
        if warning is None:
            group = [f for f in group if f.rule.kind == "manual" or _may_reopen(f, closures.get((sid, f.rule.id)), now)]
            out.held_back += len(groups[key]) - len(group)
            if not group:
                continue
            top = group[0]
            sensitive = any(book.is_sensitive(f.rule) for f in group)
            warning, created = _insert_warning(session, sid, category, top.level, sensitive, now)
            if created:
                out.opened += 1
                _event(session, warning, "opened", now, top)
                for f in group[1:]:
                    _event(session, warning, "evidence", now, f)
                evidence = {f.rule.id: _Known(f.signature, f.level, [e.text for e in f.evidence]) for f in group}
                _refresh(warning, book, evidence, now)
                _route(session, book, warning, evidence, directory, routing, notifier, now, "opened", group)
                continue
            # A concurrent writer opened it a moment ago: add to theirs.
            known.update(_known_evidence(session, [warning.id]))
            routing.load(session, [warning.id])
        _update(session, book, warning, group, known[warning.id], directory, routing, notifier, now, out)
    out.notices = notifier.count
    return out


def _may_reopen(f: Finding, closed: tuple[datetime, str, str | None] | None, now: datetime) -> bool:
    """After a closure the rule warns again only on changed evidence, past its cooldown or at a higher level."""
    if closed is None:
        return True
    closed_at, level, signature = closed
    if signature == f.signature:
        return False
    return f.rank > LEVELS.index(level) or now - closed_at >= timedelta(days=f.rule.cooldown_days)


def _update(session: Session, book: RuleBook, warning: RiskWarning, group: list[Finding],
            evidence: dict[str, _Known], directory: Directory, routing: _Routing, notifier: Notifier,
            now: datetime, out: Outcome) -> None:
    """Add new evidence to an open warning and raise its level when a finding calls for more."""
    fresh = [f for f in group
             if f.rule.kind == "manual" or f.rule.id not in evidence or evidence[f.rule.id].signature != f.signature]
    if not fresh:
        return
    top = max(fresh, key=lambda f: f.rank)
    raise_to = top.level if top.rank > LEVELS.index(warning.level) else None
    flag_events = []
    for f in fresh:
        kind = "flagged" if f.rule.kind == "manual" else ("raised" if raise_to and f is top else "evidence")
        event = _event(session, warning, kind, now, f)
        if kind == "flagged":
            flag_events.append(event)
        evidence[f.rule.id] = _Known(f.signature, f.level, [e.text for e in f.evidence])
    warning.sensitive = warning.sensitive or any(book.is_sensitive(f.rule) for f in fresh)
    if raise_to:
        warning.level = raise_to
        out.raised += 1
    else:
        out.evidence += 1
    _refresh(warning, book, evidence, now)
    if flag_events:
        session.flush()  # the flag's event id keys its notice
    if raise_to:
        event_key = f"raised:{raise_to}"
    elif flag_events:
        event_key = f"flag:{flag_events[0].id}"
    else:
        event_key = None  # new evidence at the same level: only people not yet told hear of it
    _route(session, book, warning, evidence, directory, routing, notifier, now, event_key, fresh)


def _refresh(warning: RiskWarning, book: RuleBook, evidence: dict[str, _Known], now: datetime) -> None:
    """The warning's summary: the newest evidence of each rule, the most serious rule first."""
    def rank(rid: str) -> tuple[int, str]:
        rule = book.by_id.get(rid)
        return (-(rule.rank if rule else 0), rid)

    lines = []
    for rid in sorted(evidence, key=rank):
        lines += evidence[rid].texts
    warning.summary = "\n".join(dict.fromkeys(lines))
    warning.updated_at = now


def _route(session: Session, book: RuleBook, warning: RiskWarning, evidence: dict[str, _Known],
           directory: Directory, routing: _Routing, notifier: Notifier, now: datetime, event_key: str | None,
           findings: list[Finding]) -> None:
    """Add the recipients every contributing rule asks for, then collect their notices.

    Someone not told of the warning yet hears of it whole ("opened"); the others hear of the
    event (a raise, a new flag); new evidence at the same level tells only the newcomers.
    """
    relations = {rel for rid in evidence if rid in book.by_id for rel in book.by_id[rid].recipients}
    rows = routing.recipients[warning.id]
    recorders = frozenset().union(*(f.recorders for f in findings))
    for staff_id, relation in directory.people(warning.student_id, relations, warning.sensitive, recorders).items():
        if staff_id not in rows:
            rows[staff_id] = RiskWarningRecipient(warning_id=warning.id, staff_id=staff_id, relation=relation,
                                                  added_at=now)
            session.add(rows[staff_id])
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
                    session.add(RiskNotice(warning_id=warning.id, staff_id=staff_id, event_key=key,
                                           week=notifier.week))
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
    """Every finding of `rules` for `students` (None: everyone): aggregates shared per window."""
    findings: list[Finding] = []
    by_window: dict[str, set[str]] = defaultdict(set)
    for rule in rules:
        if rule.kind in ("threshold", "missing"):
            by_window[rule.window] |= set(rule.points)
        elif rule.kind == "trend":
            assert rule.domain and rule.baseline
            codes = {p.code for p in trend_points(catalogue, rule.domain)}
            by_window[rule.window] |= codes
    cache: dict[str, dict[tuple[int, str], Aggregate]] = {}
    for window, codes in by_window.items():
        start, end = window_bounds(window, today, cal)
        cache[window] = aggregates(session, catalogue, codes, start, end, students,
                                   semesters_between(cal, start, end))
    cohorts: dict[int, tuple[set[int], date | None]] = {}
    for rule in rules:
        eligible: set[int] | None = None
        graduation = None
        if rule.cohort == "final_year":
            if rule.graduation_within_days not in cohorts:
                cohorts[rule.graduation_within_days] = final_year_students(
                    session, cal, today, rule.graduation_within_days, students)
            eligible, graduation = cohorts[rule.graduation_within_days]
            if not eligible:
                continue
        if rule.kind == "threshold":
            found = match_threshold(rule, catalogue, cache[rule.window], eligible)
            if "任课教师" in rule.recipients and found:
                found = _with_recorders(session, rule, found, *window_bounds(rule.window, today, cal))
            findings += found
        elif rule.kind == "missing":
            findings += match_missing(rule, catalogue, cache[rule.window], eligible or set(), graduation)
        elif rule.kind == "trend":
            recent_start, _end = window_bounds(rule.window, today, cal)
            before_end = recent_start - timedelta(days=1)
            before_start, _ = window_bounds(rule.baseline or "56d", before_end, cal)
            codes = [p.code for p in trend_points(catalogue, rule.domain or "")]
            before = aggregates(session, catalogue, codes, before_start, before_end, students,
                                semesters_between(cal, before_start, before_end))
            findings += match_trend(rule, catalogue, cache[rule.window], before)
    return findings


def _with_recorders(session: Session, rule: Rule, findings: list[Finding], start: date,
                    end: date) -> list[Finding]:
    """The findings with the staff who recorded their evidence (one query per rule, not per student)."""
    who: dict[int, set[int]] = defaultdict(set)
    for chunk in _chunks(sorted({f.student_id for f in findings})):
        rows = session.execute(select(ScoreEntry.student_id, ScoreEntry.recorder_id).where(
            ScoreEntry.revoked_at.is_(None), ScoreEntry.point_code.in_(rule.points),
            ScoreEntry.occurred_on >= start, ScoreEntry.occurred_on <= end, ScoreEntry.student_id.in_(chunk),
            ScoreEntry.recorder_id.is_not(None)).distinct())
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
    _event(session, warning, kind, now, level=warning.level, note=note, actor_id=person.staff_id,
           actor=person.audit_name)
    session.flush()
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
    for warning in sorted(warnings, key=lambda w: (-LEVELS.index(w.level), w.id)):
        days = (now - _aware(warning.opened_at)).days
        rows = routing.recipients[warning.id]
        before = [f"{names.get(s, '')}（{r.relation}）" for s, r in sorted(rows.items(), key=lambda i: i[1].id)
                  if may_see(warning, r.relation)]
        warning.escalated_at = now
        _event(session, warning, "escalated", now, level=warning.level,
               note=f"{days} 天未处理，转{'学工办' if warning.sensitive else '学工办、系部主任'}督办")
        office = directory.people(warning.student_id, ("学工办", "系部主任"), warning.sensitive)
        for staff_id, relation in office.items():
            if staff_id not in rows:
                session.add(RiskWarningRecipient(warning_id=warning.id, staff_id=staff_id, relation=relation,
                                                 escalated=True, added_at=now))
            notifier.add(warning, staff_id, "escalated", days=days, routed=before)
    session.flush()
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

