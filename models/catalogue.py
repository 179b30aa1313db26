"""The 采分点 catalogue: loaded from an editable TOML file, looked up by name or alias."""

from __future__ import annotations

import operator
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DOMAINS = ("学业发展", "个人发展", "职业发展")
SCOPES = ("个人", "班级")
KINDS = ("rate", "score", "count", "level", "document")
PERIODS = ("每次课前", "周末", "月末", "学期末", "学年初", "学年末", "第一学期中", "毕业前")
ROLES = ("班主任", "任课教师", "辅导员", "学工办", "教研室", "体育老师", "系部主任", "院领导", "管理员")

_COMPARATORS = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}


class CatalogueError(ValueError):
    """The catalogue file is not valid; the message says which point and field."""


@dataclass(frozen=True)
class Derivation:
    """How a class point is computed from an individual point of its students."""

    op: str  # mean | sum | share
    of: str
    where: str | None = None

    def matches(self, value: float) -> bool:
        """For `share`: does a student's value count towards the share."""
        op, _, limit = (self.where or ">= 1").partition(" ")
        return _COMPARATORS[op](value, float(limit))


@dataclass(frozen=True)
class ScorePoint:
    """One 采分点 with everything needed to record, check and score it."""

    code: str
    no: int
    name: str
    domain: str
    scope: str
    kind: str
    period: str
    recorders: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    range: tuple[float, float] = (0.0, 100.0)
    levels: tuple[tuple[str, float], ...] = ()
    sensitive: bool = False
    direction: str = "up"
    per_unit: float = 10.0
    weight: float = 1.0
    derived: Derivation | None = None
    table_note: str | None = None

    @property
    def short(self) -> str:
        """The name before any parenthesis: what people type."""
        return re.split(r"[（(]", self.name, maxsplit=1)[0]

    @property
    def is_class(self) -> bool:
        return self.scope == "班级"

    @property
    def is_observation(self) -> bool:
        """每次课前: every record is one session's observation, averaged."""
        return self.period == "每次课前"

    @property
    def accumulates(self) -> bool:
        """Count points add up; everything else is replaced by the newest value."""
        return self.kind == "count"

    def level_index(self, text: str) -> int | None:
        for i, (label, _score) in enumerate(self.levels):
            if label == text:
                return i
        return None

    def display_value(self, value: float) -> str:
        """The value as a person reads it (95%, 3次, 记过, 已提交)."""
        if self.kind == "rate":
            return f"{value:.1f}%".replace(".0%", "%")
        if self.kind == "count":
            return f"{value:g}次"
        if self.kind == "level":
            i = int(round(value))
            return self.levels[i][0] if 0 <= i < len(self.levels) else f"{value:g}"
        if self.kind == "document":
            return "已提交" if value >= 1 else "未提交"
        return f"{value:.1f}".removesuffix(".0")

    def card_points(self, value: float) -> float:
        """Convert a value to 0–100 card points (the formula is in catalogue.toml)."""
        if self.kind == "document":
            return 100.0 if value >= 1 else 0.0
        if self.kind == "level":
            i = min(max(int(round(value)), 0), len(self.levels) - 1)
            return float(self.levels[i][1])
        if self.kind == "count":
            raw = self.per_unit * value
            return max(0.0, 100.0 - raw) if self.direction == "down" else min(100.0, raw)
        lo, hi = self.range
        scaled = 100.0 * (value - lo) / (hi - lo) if hi > lo else value
        scaled = min(100.0, max(0.0, scaled))
        return 100.0 - scaled if self.direction == "down" else scaled


@dataclass(frozen=True)
class CardFormula:
    """The configurable part of the card: domain weights and the value-added period."""

    domain_weights: dict[str, float] = field(default_factory=dict)
    compare: str = "week"


def normalise(text: str) -> str:
    """NFKC (full-width digits and punctuation), Chinese parentheses unified, trimmed."""
    text = unicodedata.normalize("NFKC", text)
    return text.replace("（", "(").replace("）", ")").strip()


class Catalogue:
    """All points, indexed by code and by every name people may type."""

    def __init__(self, points: list[ScorePoint], formula: CardFormula) -> None:
        self.points = points
        self.formula = formula
        self.by_code = {p.code: p for p in points}
        # name -> {scope: point}; the target (student or class) picks the scope.
        self._names: dict[str, dict[str, ScorePoint]] = {}
        for p in points:
            for name in {p.name, p.short, *p.aliases}:
                key = normalise(name)
                slot = self._names.setdefault(key, {})
                if p.scope in slot and slot[p.scope] is not p:
                    raise CatalogueError(f"名称“{name}”同时指向 {slot[p.scope].code} 和 {p.code}")
                slot[p.scope] = p
        self._name_lengths = sorted({len(n) for n in self._names}, reverse=True)

    def __len__(self) -> int:
        return len(self.points)

    def match_prefix(self, text: str) -> tuple[str, dict[str, ScorePoint]] | None:
        """The longest point name that starts `text`, with its points by scope."""
        norm = normalise(text)
        for length in self._name_lengths:  # a dict look-up per distinct name length, longest first
            points = self._names.get(norm[:length])
            if points is not None:
                return norm[:length], points
        return None

    def lookup(self, name: str) -> dict[str, ScorePoint]:
        """Points by scope for an exact name or alias (empty if unknown)."""
        return self._names.get(normalise(name), {})

    def individual(self) -> list[ScorePoint]:
        return [p for p in self.points if not p.is_class]

    def for_class(self) -> list[ScorePoint]:
        return [p for p in self.points if p.is_class]


def _point_from(raw: dict) -> ScorePoint:
    code = raw.get("code", "?")

    def need(key: str, allowed: tuple[str, ...] | None = None):
        if key not in raw:
            raise CatalogueError(f"{code}: 缺少 {key}")
        if allowed and raw[key] not in allowed:
            raise CatalogueError(f"{code}: {key}={raw[key]!r} 不在 {allowed}")
        return raw[key]

    recorders = tuple(raw.get("recorders", ()))
    for role in recorders:
        if role not in ROLES:
            raise CatalogueError(f"{code}: 未知的采分主体 {role}")
    kind = need("kind", KINDS)
    levels = tuple((str(label), float(score)) for label, score in raw.get("levels", ()))
    if kind == "level" and not levels:
        raise CatalogueError(f"{code}: level 类采分点需要 levels")
    direction = raw.get("direction", "up")
    if direction not in ("up", "down"):
        raise CatalogueError(f"{code}: direction={direction!r} 只能是 up 或 down")
    try:
        lo, hi = (float(x) for x in raw.get("range", (0, 100)))
    except (TypeError, ValueError):
        raise CatalogueError(f"{code}: range 必须是 [最小值, 最大值]") from None
    if kind in ("rate", "score") and not lo < hi:
        raise CatalogueError(f"{code}: range 的最小值必须小于最大值")
    derived = _derivation_from(code, raw.get("derived"))
    return ScorePoint(
        code=need("code"),
        no=int(need("no")),
        name=need("name"),
        domain=need("domain", DOMAINS),
        scope=need("scope", SCOPES),
        kind=kind,
        period=need("period", PERIODS),
        recorders=recorders,
        aliases=tuple(raw.get("aliases", ())),
        range=(lo, hi),
        levels=levels,
        sensitive=bool(raw.get("sensitive", False)),
        direction=direction,
        per_unit=float(raw.get("per_unit", 10)),
        weight=float(raw.get("weight", 1)),
        derived=derived,
        table_note=raw.get("table_note"),
    )


def _derivation_from(code: str, raw: dict | None) -> Derivation | None:
    """A `derived` table, checked: an unknown op or comparison must not pass silently."""
    if not raw:
        return None
    try:
        rule = Derivation(**raw)
    except TypeError:
        raise CatalogueError(f"{code}: derived 只能有 op、of、where") from None
    if rule.op not in ("mean", "sum", "share"):
        raise CatalogueError(f"{code}: derived.op={rule.op!r} 只能是 mean、sum 或 share")
    if rule.where is not None:
        op, _, limit = rule.where.partition(" ")
        try:
            float(limit)
        except ValueError:
            op = ""
        if op not in _COMPARATORS:
            raise CatalogueError(f"{code}: derived.where={rule.where!r} 应形如 \">= 1\"")
    return rule


def parse_catalogue(data: dict) -> Catalogue:
    """Build a `Catalogue` from the parsed TOML document, checking every field."""
    points = [_point_from(raw) for raw in data.get("point", [])]
    codes = [p.code for p in points]
    if len(set(codes)) != len(codes):
        raise CatalogueError("采分点编码重复")
    by_code = {p.code: p for p in points}
    for p in points:
        if p.derived and (p.derived.of not in by_code or by_code[p.derived.of].is_class):
            raise CatalogueError(f"{p.code}: derived.of 必须是个人采分点")
    card = data.get("card", {})
    formula = CardFormula(
        domain_weights={d: float(w) for d, w in card.get("domain_weights", {}).items()}
        or {d: 1.0 for d in DOMAINS},
        compare=card.get("compare", "week"),
    )
    if formula.compare not in ("week", "month"):
        raise CatalogueError("card.compare 只能是 week 或 month")
    return Catalogue(points, formula)


@lru_cache(maxsize=4)
def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate the catalogue file (cached per path)."""
    with open(path, "rb") as fh:
        return parse_catalogue(tomllib.load(fh))
