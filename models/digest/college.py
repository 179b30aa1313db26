"""The weekly digest's data, built ONCE per run for the whole college (then sliced per recipient by
models/digest/summary.py).

What it gathers, for the ISO week just ended (Monday to Sunday):

- data entry: of the recordings the week's points expect (周末 points and 每次课前 points: one
  value per student, or per class for a class point; counted as models/expected.py counts
  them), those made, by class, and per recorder;
- card scores: every student's subtotals and total as of the week's Sunday and the Sunday
  before (models/digest/standing.py: the card formula over the stored state and the entries
  since), gathered per class;
- warnings: those open at the week's end, opened or acted on in it; the rules' false alarms over
  the last four weeks; sensitive categories counted, never named;
- plan tasks overdue (open, past their deadline) by unit: 层面, else the owner's department.

Set-based: every number comes from a handful of aggregate queries over the whole college, and
no per-student or per-class query.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from statistics import fmean

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, aliased

from models.card import EMPTY, Scores
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.digest.standing import Standing, begin_standing
from models.digest.state import state_header
from models.digest.week import DigestWeek, compared_with, digest_week
from models.digest.weeks import record_week
from models.expected import _class_sizes, _recorded_classes, expected_points, recorder_scopes
from models.periods import Calendar
from models.risk.rules import ACTION_KINDS, EVIDENCE_KINDS, FALSE_ALARM, OPEN, RuleBook
from models.schema import Department, PlanTask, RiskWarning, RiskWarningEvent, SchoolClass, Staff, Student
from models.tasks import OPEN as TASK_OPEN

WEEK_PERIODS = ("周末", "每次课前")  # the points a week of data entry is made of
HANDLE_HOURS = 72
FALSE_ALARM_DAYS = 28


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
        """Add another group's students (a department: its classes)."""
        for i in range(len(DOMAINS)):
            self.now[i] += other.now[i]
            self.before[i] += other.before[i]
        self.total_now += other.total_now
        self.total_before += other.total_before
        self.added += other.added

    def domain(self, i: int) -> tuple[float | None, float | None]:
        """The mean of domain `i`'s subtotals now and a week before."""
        return _mean(self.now[i]), _mean(self.before[i])

    @property
    def total(self) -> tuple[float | None, float | None]:
        """The mean total now and a week before."""
        return _mean(self.total_now), _mean(self.total_before)

    @property
    def value_added(self) -> float | None:
        """The mean of the students' value added."""
        return _mean(self.added)


def _mean(values: list[float]) -> float | None:
    return fmean(values) if values else None


@dataclass
class ClassFigures:
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
        """Recordings expected and not made."""
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
    classes: dict[int, ClassFigures]
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


def build_college(session: Session, catalogue: Catalogue, cal: Calendar, today: date, zone: tzinfo,
                  book: RuleBook, *, persist: bool = False) -> CollegeData:
    """Compute the digest data for the whole college: a handful of aggregate queries. `zone`: the
    service's time zone (settings.timezone), where the week starts and ends; `book`: the
    early-warning rules in force (their categories, which are sensitive, the rules' titles).

    `persist`: keep the card values as of the week's Sunday for next week's digest (the weekly
    job; the caller commits). Without it nothing is written.
    """
    week = digest_week(today, cal)
    # Card scores at the two cutoffs: last week's state and the entries since (models/digest/standing.py),
    # the entries read while the queries that do not need them run.
    finish_standing = begin_standing(session, catalogue, week.term, week.sunday, week.monday,
                                     compared_with(week, cal), zone, persist=persist)
    departments = dict(session.execute(select(Department.id, Department.name)).all())
    sizes = _class_sizes(session)
    classes = {r.id: ClassFigures(r.id, r.code, r.name, r.department_id, sizes.get(r.id, 0))
               for r in session.execute(select(SchoolClass.id, SchoolClass.code, SchoolClass.name,
                                               SchoolClass.department_id))}
    class_of = dict(session.execute(select(Student.id, Student.class_id)).all())

    since = datetime.combine(week.monday, time(0), zone).astimezone(UTC)
    until = since + timedelta(days=7)
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
    if persist and week.in_session:
        _keep_weeks(session, catalogue, cal, week, values, class_of,
                    {c.id: c.department_id for c in classes.values()})
    return CollegeData(
        week=week, departments=departments, classes=classes,
        recorders=_data_entry(entry_facts, week, classes, class_of, values.week_done),
        warnings=warnings, false_alarms=false_alarms,
        sensitive_categories=frozenset(c.name for c in book.categories.values() if c.sensitive),
        categories=tuple(book.categories), overdue_tasks=overdue_tasks, since=since, until=until,
    )


def _keep_weeks(session: Session, catalogue: Catalogue, cal: Calendar, week: DigestWeek, values: Standing,
                class_of: dict[int, int], department_of: dict[int, int]) -> None:
    """The weeks' means (models/digest/weeks.py) as of the week's Sunday, and as of the Sunday before
    when of the same semester and not kept yet (the first run, or a week the job missed)."""
    record_week(session, catalogue, week.term, week.sunday, values.now, class_of, department_of)
    term, day = compared_with(week, cal)
    if term.key == week.term.key:
        record_week(session, catalogue, term, day, values.before, class_of, department_of)


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


def _data_entry(facts: _EntryFacts, week: DigestWeek, classes: dict[int, ClassFigures],
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
                    classes: dict[int, ClassFigures]) -> dict[int, set[tuple[int, ScorePoint]]]:
    """staff id → (class id, point) each recorder is expected to record (two roles count once)."""
    out: dict[int, set[tuple[int, ScorePoint]]] = defaultdict(set)
    for point in points:
        for role in point.recorders:
            for staff_id, class_ids in scopes.get(role, {}).items():
                out[staff_id] |= {(c, point) for c in class_ids if c in classes}
    return out


def _warnings(session: Session, since: datetime, until: datetime) -> list[WarningRow]:
    """The warnings the week's counts need: open at its end, opened or acted on in it (one query)."""
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


def _false_alarms(session: Session, book: RuleBook, since: datetime,
                  until: datetime) -> list[tuple[str, str, int | None, int, int]]:
    """Per rule and department: warnings closed in the window it gave evidence to, and how many 误报."""
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
    owner = aliased(Staff)
    rows = session.execute(
        select(PlanTask.level, owner.department_id, Department.name, func.count())
        .join(owner, owner.id == PlanTask.owner_id)
        .outerjoin(Department, Department.id == owner.department_id)
        .where(PlanTask.status == TASK_OPEN, PlanTask.due < today)
        .group_by(PlanTask.level, owner.department_id, Department.name)).all()
    out = []
    for level, dept_id, dept_name, count in rows:
        out += [(level or dept_name or "学院", dept_id)] * int(count)
    return out

