"""The 采分点 catalogue: loaded from an editable TOML file, looked up by name or alias; a typed value
checked against its point (`parse_value`, the one rule chat and `scores import` share)."""

from __future__ import annotations

import math
import operator
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from models.numbers import shown
from models.problems import Problem, ProblemError

DOMAINS = ("学业发展", "个人发展", "职业发展")
SCOPES = ("个人", "班级")
KINDS = ("rate", "score", "count", "level", "document")
PERIODS = ("每次课前", "周末", "月末", "学期末", "学年初", "学年末", "第一学期中", "毕业前")
ROLES = ("班主任", "任课教师", "辅导员", "学工办", "教研室", "体育老师", "系部主任", "院领导", "管理员")

_COMPARATORS = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}


class CatalogueError(ProblemError):
    """The catalogue file is not valid: one `Problem` (templates/errors/catalogue/<code>.txt) naming
    the point and field; the edge that loads the catalogue words it."""

    def __init__(self, code: str, /, **fields: object) -> None:
        """The problem (a template's name under errors/catalogue/) and the fields it names."""
        super().__init__(Problem(f"catalogue/{code}", fields))

    @property
    def problem(self) -> Problem:
        """The one problem."""
        return self.problems[0]

    def __str__(self) -> str:
        """The code and fields, for a log line or a traceback (developers read those)."""
        return f"{self.problem.code} {dict(self.problem.fields)}"


class LineError(ProblemError):
    """A value (or a line of a recording) that cannot be recorded, as a value: one `Problem` whose
    code names its template (templates/errors/<code>.txt). Chat renders it into its reply,
    `scores import` into its error list, each through templates/errors/problem.txt."""

    def __init__(self, code: str, /, **fields: object) -> None:
        """The problem `code` and the fields its template names."""
        super().__init__(Problem(code, fields))

    @property
    def problem(self) -> Problem:
        """The one problem."""
        return self.problems[0]


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
                    raise CatalogueError("name_twice", name=name, first=slot[p.scope].code, second=p.code)
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
            raise CatalogueError("missing", code=code, key=key)
        if allowed and raw[key] not in allowed:
            raise CatalogueError("not_allowed", code=code, key=key, value=repr(raw[key]), allowed=str(allowed))
        return raw[key]

    recorders = tuple(raw.get("recorders", ()))
    for role in recorders:
        if role not in ROLES:
            raise CatalogueError("unknown_role", code=code, role=role)
    kind = need("kind", KINDS)
    levels = tuple((str(label), float(score)) for label, score in raw.get("levels", ()))
    if kind == "level" and not levels:
        raise CatalogueError("no_levels", code=code)
    direction = raw.get("direction", "up")
    if direction not in ("up", "down"):
        raise CatalogueError("bad_direction", code=code, value=repr(direction))
    try:
        lo, hi = (float(x) for x in raw.get("range", (0, 100)))
    except (TypeError, ValueError):
        raise CatalogueError("bad_range", code=code) from None
    if kind in ("rate", "score") and not lo < hi:
        raise CatalogueError("empty_range", code=code)
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
        raise CatalogueError("derived_keys", code=code) from None
    if rule.op not in ("mean", "sum", "share"):
        raise CatalogueError("derived_op", code=code, value=repr(rule.op))
    if rule.where is not None:
        op, _, limit = rule.where.partition(" ")
        try:
            float(limit)
        except ValueError:
            op = ""
        if op not in _COMPARATORS:
            raise CatalogueError("derived_where", code=code, value=repr(rule.where))
    return rule


def parse_catalogue(data: dict) -> Catalogue:
    """Build a `Catalogue` from the parsed TOML document, checking every field."""
    points = [_point_from(raw) for raw in data.get("point", [])]
    codes = [p.code for p in points]
    if len(set(codes)) != len(codes):
        raise CatalogueError("duplicate_code")
    by_code = {p.code: p for p in points}
    for p in points:
        if p.derived and (p.derived.of not in by_code or by_code[p.derived.of].is_class):
            raise CatalogueError("derived_of", code=p.code)
    card = data.get("card", {})
    formula = CardFormula(
        domain_weights={d: float(w) for d, w in card.get("domain_weights", {}).items()}
        or {d: 1.0 for d in DOMAINS},
        compare=card.get("compare", "week"),
    )
    if formula.compare not in ("week", "month"):
        raise CatalogueError("bad_compare")
    return Catalogue(points, formula)


@lru_cache(maxsize=4)
def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate the catalogue file (cached per path)."""
    with open(path, "rb") as fh:
        return parse_catalogue(tomllib.load(fh))


# ── values as people type them ──────────────────────────────────────────────

NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?%?$")
SUBMITTED = {"已提交", "提交", "已交", "交", "是", "有", "1"}
NOT_SUBMITTED = {"未提交", "未交", "否", "无", "0"}
MAX_COUNT = 20  # a count added by one record: more is surely a typo


def parse_value(point: ScorePoint, token: str | None) -> float:
    """A typed value checked against the point's kind and range (a `LineError` says why not)."""
    if token is None:
        if point.kind in ("count", "document"):
            return 1.0
        raise LineError("value/missing", point=point.short)
    if point.kind == "level":
        index = point.level_index(token)
        if index is None:
            raise LineError("value/not_a_level", point=point.short, levels=[label for label, _ in point.levels])
        return float(index)
    if point.kind == "document":
        if token in SUBMITTED:
            return 1.0
        if token in NOT_SUBMITTED:
            return 0.0
        raise LineError("value/not_a_document", point=point.short)
    if not NUMBER.match(token):
        raise LineError("value/not_a_number", token=shown(token))
    percent = token.endswith("%")
    value = float(token.rstrip("%"))
    if not math.isfinite(value):  # digits enough to overflow a float: no count or score is that large
        raise LineError("value/too_large", token=shown(token))
    if point.kind == "count":
        if percent or value != int(value) or not 1 <= value <= MAX_COUNT:
            raise LineError("value/not_a_count", point=point.short, max=MAX_COUNT)
        return value
    if percent and point.kind != "rate":
        raise LineError("value/no_percent", point=point.short)
    lo, hi = point.range
    if not lo <= value <= hi:
        raise LineError("value/out_of_range", point=point.short, lo=lo, hi=hi, percent=point.kind == "rate",
                        token=shown(token))
    return value


def is_value_token(point: ScorePoint, token: str) -> bool:
    """Whether `token` reads as a value of the point (well formed, whether or not in range)."""
    if point.kind == "level":
        return point.level_index(token) is not None
    if point.kind == "document":
        return token in SUBMITTED or token in NOT_SUBMITTED
    return bool(NUMBER.match(token))
