"""The rule book: the rules file (`risk_rules.toml`, documented there) read and checked once.

A bad file raises `RulesError` with a code and the values that locate the mistake; the words an
IT person reads are templates/errors/risk_rules.txt (rendered where the error surfaces).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.config import Settings
from models.catalogue import Catalogue, normalise

LEVELS = ("关注", "预警", "严重")
RULE_KINDS = ("threshold", "missing", "trend", "manual")
MEASURES = ("mean", "sum", "latest", "count")
RELATIONS = ("班主任", "辅导员", "学工办", "系部主任", "任课教师")  # a person with two: the first wins
# Who may receive a sensitive warning as an individual case (PRODUCT.md §2).
SENSITIVE_RELATIONS = frozenset({"班主任", "辅导员", "学工办"})
DOMAINS = ("学业发展", "个人发展", "职业发展")
OPEN, HANDLED, FALSE_ALARM = "open", "handled", "false_alarm"
ACTION_KINDS = (HANDLED, FALSE_ALARM)
EVIDENCE_KINDS = ("opened", "raised", "evidence", "flagged")
DEFAULT_RULES = Path(__file__).with_name("risk_rules.toml")
_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "==": float.__eq__}
WINDOW_DAYS = re.compile(r"^(\d{1,3})d$")


class RulesError(ValueError):
    """The rules file is not valid: `code` names the mistake, `values` the rule and the field."""

    def __init__(self, code: str, **values: object) -> None:
        """`code`: a branch of templates/errors/risk_rules.txt; `values`: what it shows."""
        super().__init__(f"{code}: {values}")
        self.code = code
        self.values = values


# ── rules ────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Condition:
    """`mean < 90`: a measure of a point's aggregate compared with a number."""

    measure: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        """Whether a measured value meets the condition."""
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
        """The level's place in LEVELS (higher: more serious)."""
        return LEVELS.index(self.level)


@dataclass(frozen=True)
class Policy:
    """Escalation, the weekly cap and the card history length."""

    escalate_after_days: float = 3
    escalate_levels: tuple[str, ...] = LEVELS
    weekly_cap: int = 10
    cap_exempt_levels: tuple[str, ...] = ("严重",)
    history_on_card: int = 5


@dataclass(eq=False)  # compared and hashed by identity: a cache key (load_rules makes one per file)
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
        """The category's manual rule (whom a person's flag goes to)."""
        return next(r for r in self.rules if r.kind == "manual" and r.category == category)

    def is_sensitive(self, rule: Rule) -> bool:
        """A rule is sensitive by itself or by its category."""
        return rule.sensitive or self.categories[rule.category].sensitive

    def automatic(self) -> list[Rule]:
        """The rules evaluated from the data (every kind but manual)."""
        return [r for r in self.rules if r.kind != "manual"]


def parse_condition(rule_id: str, text: str) -> Condition:
    """`"mean < 90"` → Condition; anything else raises RulesError naming the rule."""
    parts = text.split()
    if len(parts) != 3 or parts[0] not in MEASURES or parts[1] not in _OPS:
        raise RulesError("when_format", rule=rule_id, when=repr(text))
    try:
        return Condition(parts[0], parts[1], float(parts[2]))
    except ValueError:
        raise RulesError("when_number", rule=rule_id, when=repr(text)) from None


def window_ok(text: str) -> bool:
    """A window is `<n>d`, `semester` or `year`."""
    return text in ("semester", "year") or bool(WINDOW_DAYS.match(text))


def _rule_from(raw: dict, categories: dict[str, Category], catalogue: Catalogue) -> Rule:
    rid = str(raw.get("id") or "?")
    known = set(Rule.__dataclass_fields__) | {"when"}
    unknown = set(raw) - known
    if unknown:
        raise RulesError("unknown_fields", rule=rid, fields=sorted(unknown))
    for key in ("id", "category", "level", "title"):
        if not raw.get(key):
            raise RulesError("missing_field", rule=rid, field=key)
    if raw["category"] not in categories:
        raise RulesError("unknown_category", rule=rid, category=raw["category"])
    if raw["level"] not in LEVELS:
        raise RulesError("bad_level", rule=rid, levels=LEVELS)
    kind = raw.get("kind", "threshold")
    if kind not in RULE_KINDS:
        raise RulesError("bad_kind", rule=rid, kind=repr(kind), kinds=RULE_KINDS)
    points = tuple(raw.get("points", ()))
    for code in points:
        point = catalogue.by_code.get(code)
        if point is None or point.is_class:
            raise RulesError("not_individual_point", rule=rid, point=code)
    recipients = tuple(raw.get("recipients", ("班主任", "辅导员")))
    for relation in recipients:
        if relation not in RELATIONS:
            raise RulesError("unknown_recipient", rule=rid, relation=relation, relations=RELATIONS)
    if not recipients:
        raise RulesError("no_recipients", rule=rid)
    window = str(raw.get("window", "28d"))
    if not window_ok(window):
        raise RulesError("bad_window", rule=rid, window=repr(window))
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
        raise RulesError("threshold_needs", rule=rid)
    if kind == "missing" and (not points or rule.cohort is None):
        raise RulesError("missing_needs", rule=rid)
    if kind == "trend":
        if rule.domain not in DOMAINS:
            raise RulesError("trend_domain", rule=rid)
        if not rule.baseline or not WINDOW_DAYS.match(rule.baseline) or not WINDOW_DAYS.match(window):
            raise RulesError("trend_windows", rule=rid)
    if rule.cohort not in (None, "final_year"):
        raise RulesError("bad_cohort", rule=rid)
    if (rule.sensitive or categories[rule.category].sensitive) and not set(recipients) <= SENSITIVE_RELATIONS:
        raise RulesError("sensitive_recipients", rule=rid, allowed=sorted(SENSITIVE_RELATIONS))
    return rule


def parse_rules(data: dict, catalogue: Catalogue, overrides: Mapping[str, str] | None = None) -> RuleBook:
    """Build a `RuleBook` from the parsed TOML, checking every field; `overrides`
    (WARNING_ESCALATE_AFTER_DAYS, WARNING_WEEKLY_CAP as given) win over the file's policy."""
    categories: dict[str, Category] = {}
    for raw in data.get("category", []):
        name = raw.get("name")
        if not name:
            raise RulesError("category_no_name")
        domain = raw.get("domain", "个人发展")
        if domain not in DOMAINS:
            raise RulesError("category_domain", name=name, domain=repr(domain))
        categories[name] = Category(name, tuple(raw.get("aliases", ())), domain, bool(raw.get("sensitive", False)))
    rules = [_rule_from(raw, categories, catalogue) for raw in data.get("rule", [])]
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise RulesError("duplicate_ids")
    for name in categories:
        manual = [r for r in rules if r.kind == "manual" and r.category == name]
        if len(manual) != 1:
            raise RulesError("manual_rule", name=name)
    raw_policy = data.get("policy", {})
    env = overrides or {}
    escalate_levels = tuple(raw_policy.get("escalate_levels", LEVELS))
    exempt = tuple(raw_policy.get("cap_exempt_levels", ("严重",)))
    if not set(escalate_levels) <= set(LEVELS) or not set(exempt) <= set(LEVELS):
        raise RulesError("policy_levels", levels=LEVELS)
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
        raise RulesError("policy_value", error=str(exc)) from None
    if policy.escalate_after_days <= 0 or policy.weekly_cap < 0:
        raise RulesError("policy_range")
    return RuleBook(policy, categories, rules)


@lru_cache(maxsize=4)
def load_rules(path: str, catalogue: Catalogue, overrides: tuple[tuple[str, str], ...] = ()) -> RuleBook:
    """Read and check a rules file (cached per path, catalogue and policy overrides)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return parse_rules(data, catalogue, dict(overrides))


def rule_book(settings: Settings, catalogue: Catalogue) -> RuleBook:
    """The rules in force: settings.risk_rules_path (RISK_RULES_PATH, or the shipped file) with the
    policy overrides of the settings."""
    return load_rules(str(settings.risk_rules_path), catalogue,
                      tuple(sorted(settings.risk_policy_overrides.items())))
