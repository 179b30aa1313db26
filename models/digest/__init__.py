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

Set-based: every number comes from a handful of aggregate queries over the whole college, and
no per-student or per-class query. The card scores come from models/digest/values.py: the weekly
job keeps every student's point values as of the week's Sunday, and next week's digest merges them
with the entries recorded since (one aggregate over those only), then runs the card formula point
by point for every student at once, with the float operations of `build_card`, so the numbers are
those of the cards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from statistics import fmean, median

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, aliased

from core.render import render
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.digest.values import EMPTY, Scores, begin_standing, state_header
from models.expected import _class_sizes, _recorded_classes, expected_points, recorder_scopes
from models.periods import Calendar, Term, week_bounds, week_key
from models.schema import (
    Department,
    PlanTask,
    RiskWarning,
    RiskWarningEvent,
    SchoolClass,
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


# ── the college's data, once ─────────────────────────────────────────────────

@dataclass
class Averages:
    """Means over students of the domain subtotals and of the total, now and a week before."""

    now: list[list[float]] = field(default_factory=lambda: [[] for _ in DOMAINS])
    before: list[list[float]] = field(default_factory=lambda: [[] for _ in DOMAINS])
    total_now: list[float] = field(default_factory=list)
    total_before: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)  # each student's value added (as the card rounds it)

    def add(self, students: list[tuple[Scores, Scores]]) -> None:
        """Students' scores (now, a week before)."""
        for i in range(len(DOMAINS)):
            self.now[i] += [x for now, _before in students if (x := now.subtotals[i]) is not None]
            self.before[i] += [x for _now, before in students if (x := before.subtotals[i]) is not None]
        self.total_now += [now.total for now, _before in students if now.total is not None]
        self.total_before += [before.total for _now, before in students if before.total is not None]
        self.added += [round(now.total - before.total, 1) for now, before in students
                       if now.total is not None and before.total is not None]

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


# The delta a state-merged digest reads grows with the state's age: one or two weeks of entries
# is the weekly job's own case (bench/college.py: about a second at 15,000 students).
QUICK_STATE_DAYS = 14


def overview_is_quick(session: Session, catalogue: Catalogue, cal: Calendar, today: date) -> bool:
    """Whether the digest as of `today` is merged from a recent state (or, in a semester's first
    week, reads that week alone) rather than computed from every entry of the semester: the
    difference between about a second and about ten at college scale."""
    week = digest_week(today, cal)
    term, day = compared_with(week, cal)
    if term.key != week.term.key:
        return True
    header = state_header(session, catalogue, week.term, day)  # as begin_standing looks it up
    return header is not None and (day - header[0].cutoff).days <= QUICK_STATE_DAYS


def compared_with(week: DigestWeek, cal: Calendar) -> tuple[Term, date]:
    """The semester and day the week's card values are compared with, as the card does: the Sunday
    before, or in the first week of a semester the end of the previous one."""
    if week.previous_sunday >= week.term.start:
        return week.term, week.previous_sunday
    previous = cal.previous_term(week.term)
    return previous, previous.end


def build_college(session: Session, catalogue: Catalogue, cal: Calendar, today: date, *,
                  persist: bool = False) -> CollegeData:
    """Compute the digest data for the whole college: a handful of aggregate queries.

    `persist`: keep the card values as of the week's Sunday for next week's digest (the weekly
    job; the caller commits). Without it nothing is written.
    """
    week = digest_week(today, cal)
    # Card scores at the two cutoffs: last week's state and the entries since (models/digest/values.py),
    # the entries read while the queries that do not need them run.
    finish_standing = begin_standing(session, catalogue, week.term, week.sunday, week.monday,
                                     compared_with(week, cal), _zone(), persist=persist)
    departments = dict(session.execute(select(Department.id, Department.name)).all())
    sizes = _class_sizes(session)
    classes = {r.id: ClassInfo(r.id, r.code, r.name, r.department_id, sizes.get(r.id, 0))
               for r in session.execute(select(SchoolClass.id, SchoolClass.code, SchoolClass.name,
                                               SchoolClass.department_id))}
    class_of = dict(session.execute(select(Student.id, Student.class_id)).all())

    since = datetime.combine(week.monday, time(0), _zone()).astimezone(UTC)
    until = since + timedelta(days=7)
    from models.risk import rule_book

    book = rule_book(catalogue)
    warnings = _warnings(session, since, until)
    false_alarms = _false_alarms(session, book, until - timedelta(days=FALSE_ALARM_DAYS), until)
    overdue_tasks = _overdue_tasks(session, today)
    entry_facts = _data_entry_facts(session, catalogue, week)

    values = finish_standing()
    members: dict[int, list[int]] = defaultdict(list)
    for sid, class_id in class_of.items():
        members[class_id].append(sid)
    now, before = values.now.get, values.before.get
    for class_id, sids in members.items():
        if class_id in classes:
            classes[class_id].averages.add([(now(sid, EMPTY), before(sid, EMPTY)) for sid in sids])
    return CollegeData(
        week=week, departments=departments, classes=classes,
        recorders=_data_entry(entry_facts, week, classes, class_of, values.week_done),
        warnings=warnings, false_alarms=false_alarms,
        sensitive_categories=frozenset(c.name for c in book.categories.values() if c.sensitive),
        categories=tuple(book.categories), overdue_tasks=overdue_tasks, since=since, until=until,
    )


@dataclass(frozen=True)
class _EntryFacts:
    """What the week's data entry needs besides the students' entries."""

    points: list[ScorePoint]  # expected this week
    class_done: set[tuple[int, str]]  # (class id, code) of the class points recorded
    scopes: dict[str, dict[int, set[int]]]  # as models.expected.recorder_scopes
    names: dict[int, str]  # staff id → name


def _data_entry_facts(session: Session, catalogue: Catalogue, week: DigestWeek) -> _EntryFacts:
    points = [p for period in WEEK_PERIODS for p in expected_points(catalogue, period)]
    for_class = [p.code for p in points if p.is_class]
    return _EntryFacts(points, _recorded_classes(session, for_class, week.key) if for_class else set(),
                       recorder_scopes(session), dict(session.execute(select(Staff.id, Staff.name)).all()))


def _data_entry(facts: _EntryFacts, week: DigestWeek, classes: dict[int, ClassInfo],
                class_of: dict[int, int], week_done: dict[str, set[int]]) -> dict[int | None, dict[int, RecorderGap]]:
    """Expected and made recordings of the week per class, and per recorder (as models/expected.py)."""
    points, class_done = facts.points, facts.class_done
    individual = [p for p in points if not p.is_class]
    done: Counter = Counter()  # (class id, code) → students with a value in the week
    for point in individual:
        per_class = Counter(map(class_of.get, week_done.get(point.code, ())))
        done.update({(class_id, point.code): n for class_id, n in per_class.items() if class_id is not None})

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

    scopes, names = facts.scopes, facts.names
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
