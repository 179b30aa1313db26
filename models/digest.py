"""The weekly digest for 系部主任 and 院领导: built ONCE per run for the whole college, then sliced.

What it reports, for the ISO week just ended (Monday to Sunday):

- data entry: of the recordings the week's points expect (周末 points and 每次课前 points: one
  value per student, or per class for a class point; counted as models/expected.py counts
  them), the share made, by department and class, and the recorders who are behind;
- domain averages: the mean over students of each domain subtotal of the card, computed with
  the card formula (models/card.py) from the semester-to-date point values as of the week's
  Sunday, and its change against the Sunday before; the same for the total;
- the classes gaining and losing most: the mean over the class's students of the card's value
  added (total on Sunday minus total on the Sunday before, as the card computes it);
- warnings by category: new in the week, open at its end, the share acted on within 72 h (of
  those opened in the 7 days ending 72 h before the week's end, so each had its 72 h), open
  longer than 72 h (overdue), the median time to first action (处理 or 误报) of the actions
  taken in the week; sensitive categories (心理健康, 理财) as counts only; and the rules with
  most false alarms over the last four weeks;
- plan tasks overdue (open, past their deadline) by unit: 层面, else the owner's department.

Set-based: every number comes from a handful of aggregate queries over the whole college (one
GROUP BY student and point over the semester's entries, a few small ones for classes, staff,
warnings and tasks); there is no per-student or per-class query. The per-student card formula
then runs in Python over the aggregated point values, summing in the catalogue's order exactly
as `build_card` does, so the numbers are those of the cards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from statistics import fmean, median

from sqlalchemy import case, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session, aliased

from bot.templating import render
from models.card import Entry, point_value
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.db import tune_for_aggregates
from models.expected import _class_sizes, _recorded_classes, expected_points, recorder_scopes
from models.periods import UNIT_OF_PERIOD, Calendar, Term, week_bounds, week_key
from models.schema import (
    Department,
    PlanTask,
    RiskWarning,
    RiskWarningEvent,
    SchoolClass,
    ScoreEntry,
    Staff,
    Student,
)

PURPOSE = "weekly_digest"
MAX_BYTES = 2048  # WeCom markdown and text messages, UTF-8
WEEK_PERIODS = ("周末", "每次课前")  # the points a week of data entry is made of
HANDLE_HOURS = 72
FALSE_ALARM_DAYS = 28
# How much of each list a message shows.
SHOW_CLASSES = 5  # lowest data-entry classes
SHOW_RECORDERS = 5  # recorders behind
SHOW_MOVERS = 3  # classes gaining / losing most
SHOW_RULES = 3  # rules with most false alarms
SHOW_UNITS = 6  # units with overdue tasks
SECTIONS = ("entry", "domains", "movers", "warnings", "tasks")


# ── the week ─────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class DigestWeek:
    """The week reported on: Monday to Sunday, its ISO key, its semester, the Sunday before."""

    monday: date
    sunday: date
    key: str
    term: Term
    previous_sunday: date
    in_session: bool

    @property
    def label(self) -> str:
        return f"{self.key[:4]}年第{int(self.key[6:])}周（{self.monday.month}月{self.monday.day}日–" \
               f"{self.sunday.month}月{self.sunday.day}日）"


def digest_week(today: date, cal: Calendar) -> DigestWeek:
    """The ISO week just ended before `today`'s week."""
    monday, sunday = week_bounds(today - timedelta(days=7))
    term = cal.term_for(sunday)
    session_days = any(t.start <= sunday and monday <= t.end for t in (cal.term_for(monday), term))
    return DigestWeek(monday, sunday, week_key(monday), term, sunday - timedelta(days=7), session_days)


# ── point values and the card formula, for every student at once ─────────────

def _kind(point: ScorePoint) -> str:
    """How a point's semester value is made (mirrors models.card.point_value)."""
    if point.is_observation:
        return "mean"
    if point.accumulates:
        return "sum"
    if UNIT_OF_PERIOD[point.period] in ("week", "month"):
        return "period_mean"  # the mean over periods of each period's newest value
    return "newest"  # the newest value of all


@dataclass
class StudentValues:
    """Point values per student at the two cutoffs, and who has a value in the week (data entry)."""

    now: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    before: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    week_done: Counter = field(default_factory=Counter)  # (student id, code) with an entry in the week key


def _live(term: Term, cutoff: date):  # noqa: ANN202 - a SQL condition
    return (ScoreEntry.revoked_at.is_(None), ScoreEntry.student_id.is_not(None),
            or_(ScoreEntry.semester_key == term.key, ScoreEntry.period_key == term.year),
            ScoreEntry.occurred_on <= cutoff)


def student_point_values(session: Session, catalogue: Catalogue, term: Term, cutoff: date,
                         previous_cutoff: date | None, week: date | None = None) -> StudentValues:
    """Every student's semester point values as of `cutoff` (and `previous_cutoff`), from ONE aggregate.

    `week` is the Monday of the week whose entries count as data entry (`week_done`).
    On PostgreSQL the aggregate is one GROUP BY student and point, with a bitmask of the
    periods seen (weeks or months since the semester began) so that a period recorded twice
    shows as more entries than periods; only those (rare) student × point pairs are then read
    entry by entry and valued with models.card.point_value itself. Elsewhere (SQLite) a
    two-level GROUP BY (per period, then per point) gives the same values.
    """
    if session.get_bind().dialect.name == "postgresql":
        tune_for_aggregates(session)
        return _values_masked(session, catalogue, term, cutoff, previous_cutoff, week)
    return _values_two_level(session, catalogue, term, cutoff, previous_cutoff, week)


def _kinds(catalogue: Catalogue) -> dict[str, str]:
    return {p.code: _kind(p) for p in catalogue.individual()}


def _values_masked(session: Session, catalogue: Catalogue, term: Term, cutoff: date,
                   previous_cutoff: date | None, week: date | None) -> StudentValues:
    """PostgreSQL: one GROUP BY (student, point); exact re-reading where a period has two entries."""
    kinds = _kinds(catalogue)
    periodic = sorted(c for c, k in kinds.items() if k == "period_mean")
    day = ScoreEntry.occurred_on
    # One bit per period: the week (01–53) or month (01–12) number that ends every week or month
    # key; a semester is shorter than a year, so different periods never share a bit.
    bit = case((ScoreEntry.point_code.in_(periodic),
                literal_column("1::bigint << right(score_entry.period_key, 2)::int")),
               else_=literal_column("0::bigint"))
    prev = day <= (previous_cutoff or date.min)
    rows = session.connection().execute(  # plain rows: no ORM loading for 100,000s of them
        select(ScoreEntry.student_id, ScoreEntry.point_code,
               func.count(), func.sum(ScoreEntry.value), func.max(ScoreEntry.id), func.bit_or(bit),
               func.count().filter(prev), func.sum(ScoreEntry.value).filter(prev),
               func.max(ScoreEntry.id).filter(prev), func.bit_or(bit).filter(prev), func.max(day))
        .where(*_live(term, cutoff), ScoreEntry.point_code.in_(list(kinds)))
        .group_by(ScoreEntry.student_id, ScoreEntry.point_code)).all()
    out = StudentValues()
    newest: list[tuple[dict[str, float], str, int]] = []
    exact: set[tuple[int, str]] = set()
    for sid, code, n, total, last, mask, n_prev, total_prev, last_prev, mask_prev, last_on in rows:
        kind = kinds[code]
        if week is not None and last_on >= week:
            out.week_done[(sid, code)] = 1
        for values, count, s, newest_id, periods in ((out.now[sid], n, total, last, mask),
                                                      (out.before[sid], n_prev, total_prev, last_prev, mask_prev)):
            if not count:
                continue
            if kind == "mean":
                values[code] = s / count
            elif kind == "sum":
                values[code] = float(s)
            elif count == 1:
                values[code] = float(s)
            elif kind == "newest":
                newest.append((values, code, newest_id))
            elif count == periods.bit_count():
                values[code] = s / count  # one entry per period: the mean of the periods' values
            else:
                exact.add((sid, code))
    _fill_newest(session, newest)
    if exact:
        _fill_exact(session, catalogue, term, cutoff, previous_cutoff, exact, out)
    if previous_cutoff is None:
        out.before = defaultdict(dict)
    return out


def _fill_newest(session: Session, pending: list[tuple[dict[str, float], str, int]]) -> None:
    """The value of each point's newest entry, read by id (points recorded more than once)."""
    ids = sorted({i for _v, _c, i in pending})
    found: dict[int, float] = {}
    for start in range(0, len(ids), 900):
        found.update(session.execute(select(ScoreEntry.id, ScoreEntry.value)
                                     .where(ScoreEntry.id.in_(ids[start:start + 900]))).all())
    for values, code, newest_id in pending:
        values[code] = found[newest_id]


def _fill_exact(session: Session, catalogue: Catalogue, term: Term, cutoff: date, previous_cutoff: date | None,
                pairs: set[tuple[int, str]], out: StudentValues) -> None:
    """Student × point pairs with a period recorded twice: valued from their entries by the card's own code."""
    by_student: dict[int, set[str]] = defaultdict(set)
    for sid, code in pairs:
        by_student[sid].add(code)
    students = sorted(by_student)
    for start in range(0, len(students), 900):
        chunk = students[start:start + 900]
        codes = sorted({c for sid in chunk for c in by_student[sid]})
        grouped: dict[tuple[int, str], list[Entry]] = defaultdict(list)
        for r in session.execute(
                select(ScoreEntry.id, ScoreEntry.point_code, ScoreEntry.period_key, ScoreEntry.occurred_on,
                       ScoreEntry.value, ScoreEntry.student_id)
                .where(*_live(term, cutoff), ScoreEntry.student_id.in_(chunk), ScoreEntry.point_code.in_(codes))):
            if r.point_code in by_student[r.student_id]:
                grouped[(r.student_id, r.point_code)].append(
                    Entry(r.id, r.point_code, r.period_key, r.occurred_on, r.value))
        for (sid, code), entries in grouped.items():
            point = catalogue.by_code[code]
            now = point_value(point, entries)
            if now is not None:
                out.now[sid][code] = now.value
            if previous_cutoff is not None:
                before = point_value(point, [e for e in entries if e.occurred_on <= previous_cutoff])
                if before is not None:
                    out.before[sid][code] = before.value


def _values_two_level(session: Session, catalogue: Catalogue, term: Term, cutoff: date,
                      previous_cutoff: date | None, week: date | None) -> StudentValues:
    """Any database: per (student, point, period) for the points kept per period, then per (student, point)."""
    kinds = _kinds(catalogue)
    by_period = sorted(c for c, k in kinds.items() if k == "period_mean")
    prev = ScoreEntry.occurred_on <= (previous_cutoff or date.min)
    in_week = ScoreEntry.occurred_on >= (week or date.max)
    one, zero = literal(1), literal(0)
    grouped_period = case((ScoreEntry.point_code.in_(by_period), ScoreEntry.period_key), else_=literal(""))
    inner = (
        select(ScoreEntry.student_id.label("sid"), ScoreEntry.point_code.label("code"),
               grouped_period.label("pk"),
               func.count().label("n"), func.sum(ScoreEntry.value).label("s"), func.max(ScoreEntry.id).label("last"),
               func.sum(case((prev, one), else_=zero)).label("n_prev"),
               func.sum(case((prev, ScoreEntry.value), else_=None)).label("s_prev"),
               func.max(case((prev, ScoreEntry.id), else_=None)).label("last_prev"),
               func.sum(case((in_week, one), else_=zero)).label("n_week"))
        .where(*_live(term, cutoff), ScoreEntry.point_code.in_(list(kinds)))
        .group_by(ScoreEntry.student_id, ScoreEntry.point_code, grouped_period)
        .subquery())
    newest = aliased(ScoreEntry)
    newest_prev = aliased(ScoreEntry)
    latest_value = select(newest.value).where(newest.id == inner.c.last).scalar_subquery()
    latest_prev = select(newest_prev.value).where(newest_prev.id == inner.c.last_prev).scalar_subquery()
    periodic = inner.c.pk != ""
    outer = (
        select(inner.c.sid, inner.c.code,
               func.sum(case((periodic, one), else_=inner.c.n)).label("cnt"),
               func.sum(case((periodic & (inner.c.n > 1), latest_value), else_=inner.c.s)).label("tot"),
               func.sum(case((periodic & (inner.c.n_prev > 0), one), (periodic, zero),
                             else_=inner.c.n_prev)).label("cnt_prev"),
               func.sum(case((periodic & (inner.c.n_prev > 1), latest_prev), else_=inner.c.s_prev)).label("tot_prev"),
               func.max(inner.c.last).label("last"), func.max(inner.c.last_prev).label("last_prev"),
               func.sum(inner.c.n_week).label("n_week"))
        .group_by(inner.c.sid, inner.c.code))
    out = StudentValues()
    pending: list[tuple[dict[str, float], str, int]] = []
    for sid, code, cnt, tot, cnt_prev, tot_prev, last, last_prev, n_week in session.execute(outer):
        kind = kinds[code]
        if n_week:
            out.week_done[(sid, code)] = 1
        for values, count, total, newest_id in ((out.now[sid], cnt, tot, last),
                                                (out.before[sid], cnt_prev, tot_prev, last_prev)):
            if not count or total is None:
                continue
            if kind in ("mean", "period_mean"):
                values[code] = float(total) / int(count)
            elif kind == "sum" or count == 1:
                values[code] = float(total)
            else:
                pending.append((values, code, newest_id))
    _fill_newest(session, pending)
    if previous_cutoff is None:
        out.before = defaultdict(dict)
    return out


@dataclass(frozen=True)
class Scores:
    """One student's card numbers: subtotals by domain and total (None where nothing counts)."""

    subtotals: tuple[float | None, ...]
    total: float | None


class CardMath:
    """The card formula of models/card.py over plain point values, summed in the same order."""

    def __init__(self, catalogue: Catalogue, codes: set[str] | None = None) -> None:
        """`codes`: the points that have values at all (the others need not be looked at)."""
        pool = [p for p in catalogue.individual() if codes is None or p.code in codes]
        self.by_domain = [[(p.code, p, p.weight) for p in pool if p.domain == d] for d in DOMAINS]
        self.domain_weights = [catalogue.formula.domain_weights.get(d, 0.0) for d in DOMAINS]

    def scores(self, values: dict[str, float]) -> Scores:
        subtotals: list[float | None] = []
        for domain_points in self.by_domain:
            weighted = weights = 0.0
            for code, point, weight in domain_points:
                value = values.get(code)
                if value is not None:
                    weighted += point.card_points(value) * weight
                    weights += weight
            subtotals.append(round(weighted / weights, 1) if weights else None)
        present = [(s, w) for s, w in zip(subtotals, self.domain_weights, strict=True) if s is not None]
        denom = sum(w for _s, w in present)
        total = round(sum(s * w for s, w in present) / denom, 1) if denom else None
        return Scores(tuple(subtotals), total)


# ── the college's data, once ─────────────────────────────────────────────────

@dataclass
class Averages:
    """Means over students of the domain subtotals and of the total, now and a week before."""

    now: list[list[float]] = field(default_factory=lambda: [[] for _ in DOMAINS])
    before: list[list[float]] = field(default_factory=lambda: [[] for _ in DOMAINS])
    total_now: list[float] = field(default_factory=list)
    total_before: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)  # each student's value added (as the card rounds it)

    def add(self, now: Scores, before: Scores) -> None:
        for i in range(len(DOMAINS)):
            if now.subtotals[i] is not None:
                self.now[i].append(now.subtotals[i])
            if before.subtotals[i] is not None:
                self.before[i].append(before.subtotals[i])
        if now.total is not None:
            self.total_now.append(now.total)
        if before.total is not None:
            self.total_before.append(before.total)
        if now.total is not None and before.total is not None:
            self.added.append(round(now.total - before.total, 1))

    def merge(self, other: Averages) -> None:
        for i in range(len(DOMAINS)):
            self.now[i] += other.now[i]
            self.before[i] += other.before[i]
        self.total_now += other.total_now
        self.total_before += other.total_before
        self.added += other.added

    def domain(self, i: int) -> tuple[float | None, float | None]:
        return _mean(self.now[i]), _mean(self.before[i])

    @property
    def total(self) -> tuple[float | None, float | None]:
        return _mean(self.total_now), _mean(self.total_before)

    @property
    def value_added(self) -> float | None:
        return _mean(self.added)


def _mean(values: list[float]) -> float | None:
    return fmean(values) if values else None


@dataclass
class ClassInfo:
    """One class with its card averages and its week of data entry."""

    id: int
    code: str
    name: str
    department_id: int
    size: int
    averages: Averages = field(default_factory=Averages)
    expected: int = 0
    recorded: int = 0


@dataclass
class RecorderGap:
    """A recorder's expected and made recordings of the week, in one department or the college."""

    staff_id: int
    name: str
    expected: int = 0
    recorded: int = 0

    @property
    def missing(self) -> int:
        return self.expected - self.recorded


@dataclass
class WarningRow:
    """One warning, reduced to what the digest counts (never shown one by one)."""

    department_id: int | None
    category: str
    opened_at: datetime
    closed_at: datetime | None
    first_action: datetime | None


@dataclass
class CollegeData:
    """Everything the digests need, computed once per run."""

    week: DigestWeek
    departments: dict[int, str]
    classes: dict[int, ClassInfo]
    recorders: dict[int | None, dict[int, RecorderGap]]  # department (None: college) → staff → gap
    warnings: list[WarningRow]
    false_alarms: list[tuple[str, str, int | None, int, int]]  # rule id, title, department, false, closed
    sensitive_categories: frozenset[str]
    categories: tuple[str, ...]
    overdue_tasks: list[tuple[str, int | None]]  # (unit, owner's department)
    since: datetime
    until: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _zone():  # noqa: ANN202 - a tzinfo
    from models.risk import local_zone

    return local_zone()


def build_college(session: Session, catalogue: Catalogue, cal: Calendar, today: date) -> CollegeData:
    """Compute the digest data for the whole college: a handful of aggregate queries."""
    week = digest_week(today, cal)
    departments = dict(session.execute(select(Department.id, Department.name)).all())
    sizes = _class_sizes(session)
    classes = {r.id: ClassInfo(r.id, r.code, r.name, r.department_id, sizes.get(r.id, 0))
               for r in session.execute(select(SchoolClass.id, SchoolClass.code, SchoolClass.name,
                                               SchoolClass.department_id))}
    class_of = dict(session.execute(select(Student.id, Student.class_id)).all())

    # Point values at the two cutoffs: one query (two when the week before is in the last semester).
    same_term = week.previous_sunday >= week.term.start
    values = student_point_values(session, catalogue, week.term, week.sunday,
                                  week.previous_sunday if same_term else None, week.monday)
    if not same_term:
        prev_term = cal.previous_term(week.term)
        values.before = student_point_values(session, catalogue, prev_term, prev_term.end, None).now
    seen = {code for per in (values.now, values.before) for vals in per.values() for code in vals}
    math = CardMath(catalogue, seen)
    empty = Scores((None,) * len(DOMAINS), None)
    for sid, class_id in class_of.items():
        klass = classes.get(class_id)
        if klass is None:
            continue
        now = math.scores(values.now[sid]) if sid in values.now else empty
        before = math.scores(values.before[sid]) if sid in values.before else empty
        klass.averages.add(now, before)

    recorders = _data_entry(session, catalogue, week, classes, class_of, values)
    since = datetime.combine(week.monday, time(0), _zone()).astimezone(UTC)
    until = since + timedelta(days=7)
    from models.risk import rule_book

    book = rule_book(catalogue)
    return CollegeData(
        week=week, departments=departments, classes=classes, recorders=recorders,
        warnings=_warnings(session, since, until),
        false_alarms=_false_alarms(session, book, until - timedelta(days=FALSE_ALARM_DAYS), until),
        sensitive_categories=frozenset(c.name for c in book.categories.values() if c.sensitive),
        categories=tuple(book.categories),
        overdue_tasks=_overdue_tasks(session, today),
        since=since, until=until,
    )


def _data_entry(session: Session, catalogue: Catalogue, week: DigestWeek, classes: dict[int, ClassInfo],
                class_of: dict[int, int], values: StudentValues) -> dict[int | None, dict[int, RecorderGap]]:
    """Expected and made recordings of the week per class, and per recorder (as models/expected.py)."""
    points = [p for period in WEEK_PERIODS for p in expected_points(catalogue, period)]
    individual = [p for p in points if not p.is_class]
    for_class = [p for p in points if p.is_class]
    done: Counter = Counter()  # (class id, code) → students with a value in the week
    wanted = {p.code for p in individual}
    for (sid, code) in values.week_done:
        if code in wanted and sid in class_of:
            done[(class_of[sid], code)] += 1
    class_done = _recorded_classes(session, [p.code for p in for_class], week.key) if for_class else set()

    def made(class_id: int, point: ScorePoint) -> tuple[int, int]:
        klass = classes[class_id]
        if point.is_class:
            return 1, int((class_id, point.code) in class_done)
        return klass.size, min(done.get((class_id, point.code), 0), klass.size)

    if not week.in_session:
        return {None: {}}
    for klass in classes.values():
        for point in points:
            expected, recorded = made(klass.id, point)
            klass.expected += expected
            klass.recorded += recorded

    scopes = recorder_scopes(session)
    names = dict(session.execute(select(Staff.id, Staff.name)).all())
    gaps: dict[int | None, dict[int, RecorderGap]] = defaultdict(dict)
    for staff_id, pairs in _recorder_pairs(points, scopes, classes).items():
        for class_id, point in pairs:
            expected, recorded = made(class_id, point)
            for dept in (None, classes[class_id].department_id):
                gap = gaps[dept].setdefault(staff_id, RecorderGap(staff_id, names.get(staff_id, "?")))
                gap.expected += expected
                gap.recorded += recorded
    return gaps


def _recorder_pairs(points: list[ScorePoint], scopes: dict[str, dict[int, set[int]]],
                    classes: dict[int, ClassInfo]) -> dict[int, set[tuple[int, ScorePoint]]]:
    """staff id → (class id, point) each recorder is expected to record (two roles count once)."""
    out: dict[int, set[tuple[int, ScorePoint]]] = defaultdict(set)
    for point in points:
        for role in point.recorders:
            for staff_id, class_ids in scopes.get(role, {}).items():
                out[staff_id] |= {(c, point) for c in class_ids if c in classes}
    return out


def _warnings(session: Session, since: datetime, until: datetime) -> list[WarningRow]:
    """The warnings the week's counts need: open at its end, opened or acted on in it (one query)."""
    from models.risk import ACTION_KINDS

    first = (select(RiskWarningEvent.warning_id, func.min(RiskWarningEvent.at).label("at"))
             .where(RiskWarningEvent.kind.in_(ACTION_KINDS)).group_by(RiskWarningEvent.warning_id).subquery())
    window = since - timedelta(hours=HANDLE_HOURS)
    rows = session.execute(
        select(SchoolClass.department_id, RiskWarning.category, RiskWarning.opened_at, RiskWarning.closed_at,
               first.c.at)
        .join(Student, Student.id == RiskWarning.student_id)
        .join(SchoolClass, SchoolClass.id == Student.class_id)
        .outerjoin(first, first.c.warning_id == RiskWarning.id)
        .where(RiskWarning.opened_at < until,
               or_(RiskWarning.opened_at >= window, RiskWarning.closed_at.is_(None),
                   RiskWarning.closed_at >= since, first.c.at >= since))).all()
    return [WarningRow(dept, cat, _utc(opened), _utc(closed) if closed else None,
                       _utc(at) if at and _utc(at) < until else None)
            for dept, cat, opened, closed, at in rows]


def _false_alarms(session: Session, book, since: datetime,  # noqa: ANN001 - a RuleBook
                  until: datetime) -> list[tuple[str, str, int | None, int, int]]:
    """Per rule and department: warnings closed in the window it gave evidence to, and how many 误报."""
    from models.risk import EVIDENCE_KINDS, FALSE_ALARM, OPEN

    pairs = (select(RiskWarningEvent.rule_id, RiskWarning.id.label("wid"), RiskWarning.status,
                    SchoolClass.department_id)
             .join(RiskWarning, RiskWarning.id == RiskWarningEvent.warning_id)
             .join(Student, Student.id == RiskWarning.student_id)
             .join(SchoolClass, SchoolClass.id == Student.class_id)
             .where(RiskWarning.status != OPEN, RiskWarning.closed_at >= since, RiskWarning.closed_at < until,
                    RiskWarningEvent.rule_id.is_not(None), RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
             .distinct().subquery())
    rows = session.execute(
        select(pairs.c.rule_id, pairs.c.department_id,
               func.sum(case((pairs.c.status == FALSE_ALARM, 1), else_=0)), func.count())
        .group_by(pairs.c.rule_id, pairs.c.department_id)).all()
    out = []
    for rule_id, dept, false, closed in rows:
        rule = book.by_id.get(rule_id)
        if rule is None or book.is_sensitive(rule):
            continue  # sensitive rules: their warnings are counted in their category, never named
        out.append((rule_id, rule.title, dept, int(false or 0), int(closed)))
    return out


def _overdue_tasks(session: Session, today: date) -> list[tuple[str, int | None]]:
    """(unit, owner's department) of every open plan task past its deadline, grouped in SQL."""
    from models.tasks import OPEN

    owner = aliased(Staff)
    rows = session.execute(
        select(PlanTask.level, owner.department_id, Department.name, func.count())
        .join(owner, owner.id == PlanTask.owner_id)
        .outerjoin(Department, Department.id == owner.department_id)
        .where(PlanTask.status == OPEN, PlanTask.due < today)
        .group_by(PlanTask.level, owner.department_id, Department.name)).all()
    out = []
    for level, dept_id, dept_name, count in rows:
        out += [(level or dept_name or "学院", dept_id)] * int(count)
    return out


# ── one recipient's digest ───────────────────────────────────────────────────

def _pct(recorded: int, expected: int) -> str:
    return f"{100.0 * recorded / expected:.0f}%" if expected else "—"


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _change(now: float | None, before: float | None) -> float | None:
    return None if now is None or before is None else round(now - before, 1)


def digest_context(data: CollegeData, department_id: int | None) -> dict:
    """What the templates show for the college (None) or one department: aggregates only."""
    week = data.week
    mine = [c for c in data.classes.values() if department_id is None or c.department_id == department_id]
    scope = "全院" if department_id is None else data.departments.get(department_id, "")

    # Data entry.
    expected = sum(c.expected for c in mine)
    recorded = sum(c.recorded for c in mine)
    if department_id is None:
        groups: dict[int, list[ClassInfo]] = defaultdict(list)
        for c in mine:
            groups[c.department_id].append(c)
        units = [{"name": data.departments.get(d, "?"), "share": _pct(sum(c.recorded for c in cs),
                                                                       sum(c.expected for c in cs)),
                  "ratio": sum(c.recorded for c in cs) / max(1, sum(c.expected for c in cs))}
                 for d, cs in groups.items() if sum(c.expected for c in cs)]
        units.sort(key=lambda u: (u["ratio"], u["name"]))
    else:
        units = []
    lowest = sorted((c for c in mine if c.expected and c.recorded < c.expected),
                    key=lambda c: (c.recorded / c.expected, c.code))
    behind = sorted((g for g in data.recorders.get(department_id, {}).values() if g.missing > 0),
                    key=lambda g: (-g.missing, g.name))
    entry = {
        "in_session": week.in_session, "expected": expected, "recorded": recorded,
        "share": _pct(recorded, expected), "units": units,
        "lowest": [{"name": c.name, "share": _pct(c.recorded, c.expected)} for c in lowest[:SHOW_CLASSES]],
        "more_classes": max(0, len(lowest) - SHOW_CLASSES),
        "behind": [{"name": g.name, "missing": g.missing, "share": _pct(g.recorded, g.expected)}
                   for g in behind[:SHOW_RECORDERS]],
        "more_behind": max(0, len(behind) - SHOW_RECORDERS),
    }

    # Domain averages and movers.
    averages = Averages()
    for c in mine:
        averages.merge(c.averages)
    domains = []
    for i, name in enumerate(DOMAINS):
        now, before = averages.domain(i)
        domains.append({"domain": name, "mean": _r(now), "change": _change(now, before)})
    total_now, total_before = averages.total
    movers = sorted(((c.averages.value_added, c) for c in mine if c.averages.value_added is not None),
                    key=lambda t: (-t[0], t[1].code))
    gaining = [{"name": c.name, "added": round(v, 1)} for v, c in movers[:SHOW_MOVERS] if round(v, 1) > 0]
    losing = [{"name": c.name, "added": round(v, 1)} for v, c in reversed(movers[-SHOW_MOVERS:])
              if round(v, 1) < 0]

    # Warnings.
    rows = [w for w in data.warnings if department_id is None or w.department_id == department_id]
    late = timedelta(hours=HANDLE_HOURS)
    categories = []
    all_hours: list[float] = []
    for cat in data.categories:
        ws = [w for w in rows if w.category == cat]
        new = sum(1 for w in ws if data.since <= w.opened_at < data.until)
        open_ = [w for w in ws if w.opened_at < data.until and (w.closed_at is None or w.closed_at >= data.until)]
        overdue = sum(1 for w in open_ if w.first_action is None and w.opened_at + late < data.until)
        due = [w for w in ws if data.since - late <= w.opened_at < data.until - late]
        in_time = sum(1 for w in due if w.first_action is not None and w.first_action - w.opened_at <= late)
        hours = [(w.first_action - w.opened_at).total_seconds() / 3600 for w in ws
                 if w.first_action is not None and w.first_action >= data.since]
        all_hours += hours
        if not (new or open_ or due or hours):
            continue
        sensitive = cat in data.sensitive_categories
        categories.append({
            "name": cat, "sensitive": sensitive, "new": new, "open": len(open_), "overdue": overdue,
            "within": None if sensitive else _pct(in_time, len(due)) if due else "—",
            "median": None if sensitive or not hours else _hours(median(hours)),
        })
    fa: dict[str, list] = {}
    for rule_id, title, dept, false, closed in data.false_alarms:
        if department_id is not None and dept != department_id:
            continue
        item = fa.setdefault(rule_id, [title, 0, 0])
        item[1] += false
        item[2] += closed
    rules = sorted(((t, f, c) for t, f, c in fa.values() if f), key=lambda x: (-x[1], x[0]))
    warnings = {
        "categories": categories, "median": _hours(median(all_hours)) if all_hours else None,
        "rules": [{"title": t, "false": f, "closed": c, "share": _pct(f, c)} for t, f, c in rules[:SHOW_RULES]],
        "days": FALSE_ALARM_DAYS,
    }

    # Plan tasks.
    units_tasks = Counter(unit for unit, dept in data.overdue_tasks
                          if department_id is None or dept == department_id)
    tasks = {"total": sum(units_tasks.values()),
             "units": [{"name": u, "count": n} for u, n in
                       sorted(units_tasks.items(), key=lambda t: (-t[1], t[0]))[:SHOW_UNITS]],
             "more": max(0, len(units_tasks) - SHOW_UNITS)}

    return {
        "scope": scope, "college": department_id is None, "week": week, "entry": entry, "domains": domains,
        "total": {"mean": _r(total_now), "change": _change(total_now, total_before)},
        "students": len(averages.total_now), "classes": len(mine),
        "gaining": gaining, "losing": losing, "warnings": warnings, "tasks": tasks,
        "added": _r(averages.value_added),
    }


def _hours(value: float) -> str:
    return f"{value:.0f}小时" if value >= 1 else f"{value * 60:.0f}分钟"


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut(text: str, limit: int = MAX_BYTES) -> str:
    if _bytes(text) <= limit:
        return text
    tail = "\n…（其余从略）"
    return text.encode("utf-8")[:limit - _bytes(tail)].decode("utf-8", errors="ignore") + tail


def render_markdown(context: dict, limit: int = MAX_BYTES) -> list[str]:
    """The digest as WeCom markdown: one message, or numbered parts each within `limit` bytes."""
    def attempt(sections: Iterable[str], part: int = 0, parts: int = 0) -> str:
        return render("digest/weekly.md", sections=list(sections), part=part, parts=parts, **context)

    whole = attempt(SECTIONS)
    if _bytes(whole) <= limit:
        return [whole]
    groups: list[list[str]] = []
    current: list[str] = []
    for section in SECTIONS:  # greedy packing, labelled with the widest part numbers
        if current and _bytes(attempt([*current, section], 9, 9)) > limit:
            groups.append(current)
            current = []
        current.append(section)
    groups.append(current)
    return [_cut(attempt(g, i, len(groups)), limit) for i, g in enumerate(groups, start=1)]


def render_text(context: dict, limit: int = MAX_BYTES) -> str:
    """The digest as plain text (chat, other channels): one message, lower sections dropped to fit."""
    for n in range(len(SECTIONS), 0, -1):
        body = render("digest/weekly.txt", sections=list(SECTIONS[:n]), dropped=n < len(SECTIONS), **context)
        if _bytes(body) <= limit:
            return body
    return _cut(body, limit)


# ── recipients ───────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Recipient:
    """Who gets which digest: the college (department None) or one department."""

    staff_id: int
    name: str
    userid: str | None
    department_id: int | None


def recipients(session: Session) -> list[Recipient]:
    """Each 院领导 (the college) and each 系部主任 (their department: the one they head, else their own)."""
    staff = session.execute(select(Staff.id, Staff.staff_no, Staff.name, Staff.wecom_userid, Staff.roles,
                                   Staff.department_id).order_by(Staff.id)).all()
    heads: dict[str, int] = {}
    for dept_id, staff_no in session.execute(select(Department.id, Department.head_staff_no)
                                             .where(Department.head_staff_no.is_not(None)).order_by(Department.id)):
        heads.setdefault(staff_no, dept_id)
    out = []
    for s in staff:
        roles = set((s.roles or "").split(","))
        if "院领导" in roles:
            out.append(Recipient(s.id, s.name, s.wecom_userid, None))
        elif s.staff_no in heads:
            out.append(Recipient(s.id, s.name, s.wecom_userid, heads[s.staff_no]))
        elif "系部主任" in roles and s.department_id is not None:
            out.append(Recipient(s.id, s.name, s.wecom_userid, s.department_id))
    return out


def scope_of(session: Session, staff_id: int) -> Recipient | None:
    """The digest a staff member gets (None: neither 院领导 nor 系部主任)."""
    return next((r for r in recipients(session) if r.staff_id == staff_id), None)
