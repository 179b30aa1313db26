"""A demo college: roster, calendar and several weeks of plausible score entries.

`python -m bot demo` loads it into an empty database so that every command can be
tried from the console (`python -m bot chat --as wangfang`).

Fixed people (企业微信账号 → who):

    wangfang    王芳  班主任 of 计算机2301 (DEFAULT_USER, the console opens as her)
    zhangsan    张三  student of 计算机2301, 学号 2023010101
    lisi        李四  student of 计算机2301, 学号 2023010102
    chenjing    陈静  任课教师 (Python程序设计) of 计算机2301 and 软件技术2301
    liuwei      刘伟  辅导员 of 计算机2301, 软件技术2301, 网络2401
    zhaoqiang   赵强  体育老师 of all six classes
    sunli       孙丽  学工办, 信息工程系
    zhoujie     周杰  教研室, 信息工程系
    wujun       吴军  系部主任, 信息工程系
    zhengyuan   郑远  院领导
    admin       钱悦  管理员

Every other staff member has a pinyin userid (see `_STAFF`); every other student's
userid is their 学号 (年级 + 专业 + 班 + 序号, e.g. 2023010117). 计算机2301 has two
students named 刘洋 on purpose, so that recording by a duplicated name asks for a 学号.

History: every week of the current semester up to `today` (at most `HISTORY_WEEKS`),
the 学年初 documents, the mid-first-semester 职业生涯规划, a few counts, and the
previous semester's 学期末 points, all placed with the real calendar rules. Entries
are bulk-inserted, one `RecordingBatch` per recorder per week (source "demo") with
one audit row (action "import") per batch.
"""

from __future__ import annotations

import json
import random
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from models.catalogue import Catalogue
from models.digest.weeks import fill_weeks
from models.periods import (
    Calendar,
    Placement,
    Term,
    academic_year_of,
    default_term,
    place,
    week_bounds,
    week_key,
)
from models.problems import Problem, ProblemError
from models.schema import (
    AuditLog,
    Department,
    RecordingBatch,
    SchoolClass,
    ScoreEntry,
    Semester,
    Staff,
    Student,
    TeachingAssignment,
    utcnow,
)
from models.scores import load_calendar

HISTORY_WEEKS = 16  # weeks of the current semester filled in, counting back from today's week
SOURCE = "demo"

# The fictional college: people, classes, teaching and name pools (data, in a data file).
_DATA = tomllib.loads(Path(__file__).with_name("demo_data.toml").read_text(encoding="utf-8"))
DEFAULT_USER: str = _DATA["default_user"]  # the 班主任 the console opens as
DUPLICATE_NAME: str = _DATA["duplicate_name"]
_DEPARTMENTS = tuple(_DATA["departments"])
# 班级编号, 班级名称, 系部, 专业序号 (used in the 学号), 班主任 userid, 辅导员 userid.
CLASSES = tuple(tuple(row) for row in _DATA["classes"])
# 工号, 姓名, 企业微信账号, 角色, 系部 (None: college-wide).
_STAFF = tuple((no, name, userid, roles, dept or None) for no, name, userid, roles, dept in _DATA["staff"])
# 任课: userid, 班级编号, 课程. The 体育老师 teaches 体育 to every class (added below).
_TEACHING = tuple(tuple(row) for row in _DATA["teaching"])
PE_TEACHER, PE_COURSE = _DATA["pe_teacher"], _DATA["pe_course"]
# Department-level people (学工办, 教研室, 系部主任), by department.
_DEPT_STAFF = {dept: tuple(people) for dept, people in _DATA["department_staff"].items()}
# Fixed students: 班级编号, 序号 in class, 姓名, userid (None: the 学号).
_FIXED_STUDENTS = tuple((code, seq, name, userid or None) for code, seq, name, userid in _DATA["fixed_students"])
_SURNAMES = _DATA["names"]["surnames"]
_GIVEN_TWO = _DATA["names"]["given_two"].split()
_GIVEN_ONE = _DATA["names"]["given_one"]

# Days without classes (month, day): 国庆 and 劳动节 weeks, 元旦.
_HOLIDAYS = {(10, d) for d in range(1, 8)} | {(5, d) for d in range(1, 6)} | {(1, 1)}

# Student profiles: how diligent, with their share of the roll.
_PROFILES = (("good", 0.80), ("ok", 0.14), ("weak", 0.06))
_A03 = {"good": [100] * 9 + [95], "ok": [100, 100, 95, 95, 90, 85], "weak": [95, 90, 85, 80, 75, 70, 60]}
_LATE = {"good": 0.02, "ok": 0.07, "weak": 0.2}
_A06 = {"good": [100] * 8 + [80, 60], "ok": [100] * 5 + [80, 60, 0], "weak": [100, 100, 80, 60, 0, 0]}
_A05 = {"good": [100] * 6 + [80, 60, 0], "ok": [100, 100, 100, 80, 60, 0], "weak": [100, 80, 60, 0, 0]}
_B09 = {"good": (85, 98), "ok": (78, 95), "weak": (65, 90)}
_A09 = {"good": (75, 95), "ok": (65, 85), "weak": (48, 70)}
_B07 = {"good": (80, 95), "ok": (72, 88), "weak": (60, 80)}


@dataclass
class DemoReport:
    """What `load_demo` wrote."""

    departments: int = 0
    classes: int = 0
    staff: int = 0
    students: int = 0
    teaching: int = 0
    semesters: int = 0
    batches: int = 0
    entries: int = 0
    first_day: date | None = None
    last_day: date | None = None
    points: Counter = field(default_factory=Counter)

    default_user: str = DEFAULT_USER  # the console opens as them (templates/cli/demo_loaded.txt)


class DemoRefused(ProblemError):
    """The database is not empty: the demo college only goes into an empty one (templates/errors/demo_*.txt)."""


@dataclass
class _Pupil:
    """A generated student with the profile that drives their history."""

    row: Student
    klass: SchoolClass
    profile: str


@dataclass
class _PendingBatch:
    staff: Staff
    rows: list[dict] = field(default_factory=list)
    points: Counter = field(default_factory=Counter)
    last_at: datetime | None = None
    week: str = ""


class _Writer:
    """Collects planned entries by (recorder, ISO week), placed with the calendar."""

    def __init__(self, catalogue: Catalogue, cal: Calendar, today: date, tz: tzinfo) -> None:
        self.catalogue = catalogue
        self.cal = cal
        self.today = today
        self.tz = tz
        self.now = utcnow()
        self.batches: dict[tuple[int, str], _PendingBatch] = {}
        self._placed: dict[tuple[str, date], Placement] = {}

    def add(self, staff: Staff, code: str, day: date, value: float, at: time, *,
            student_id: int | None = None, class_id: int | None = None) -> None:
        if day > self.today:
            raise AssertionError(f"demo entry after today: {code} {day}")
        point = self.catalogue.by_code[code]
        key = (point.period, day)
        placed = self._placed.get(key)
        if placed is None:
            placed = self._placed[key] = place(point.period, day, self.cal)
        stamp = min(datetime.combine(day, at, self.tz).astimezone(UTC), self.now)
        week = week_key(day)
        batch = self.batches.get((staff.id, week))
        if batch is None:
            batch = self.batches[(staff.id, week)] = _PendingBatch(staff, week=week)
        batch.rows.append(dict(
            point_code=code, student_id=student_id, class_id=class_id,
            period_key=placed.period_key, semester_key=placed.semester_key,
            occurred_on=placed.occurred_on, value=float(value), recorder_id=staff.id,
            source=SOURCE, source_msg=None, created_at=stamp,
        ))
        batch.points[point.short] += 1
        if batch.last_at is None or stamp > batch.last_at:
            batch.last_at = stamp

    def write(self, session: Session, report: DemoReport) -> None:
        """Batches in time order, then every entry in one bulk insert, one audit row per batch."""
        pending = sorted(self.batches.values(), key=lambda b: (b.last_at, b.staff.id))
        records = [
            RecordingBatch(recorder_id=b.staff.id, source=SOURCE, created_at=b.last_at,
                           text=f"【演示数据】{b.week}：" + "、".join(
                               f"{name} {n} 条" for name, n in b.points.most_common()))
            for b in pending
        ]
        session.add_all(records)
        session.flush()
        rows: list[dict] = []
        for b, record in zip(pending, records, strict=True):
            for row in b.rows:
                row["batch_id"] = record.id
            rows.extend(b.rows)
            session.add(AuditLog(
                at=b.last_at, actor=f"{b.staff.name}({b.staff.wecom_userid})", action="import",
                entity="recording_batch", entity_key=str(record.id), source_msg=None,
                new_value=json.dumps({"entries": len(b.rows), "points": dict(b.points),
                                      "source": SOURCE}, ensure_ascii=False),
            ))
        rows.sort(key=lambda r: (r["created_at"], r["batch_id"]))
        for start in range(0, len(rows), 5000):
            session.execute(insert(ScoreEntry), rows[start:start + 5000])
        report.batches = len(records)
        report.entries = len(rows)
        report.points = Counter(r["point_code"] for r in rows)
        if rows:
            report.first_day = min(r["occurred_on"] for r in rows)
            report.last_day = max(r["occurred_on"] for r in rows)


def load_demo(session: Session, catalogue: Catalogue, today: date, seed: int = 7, *, tz: tzinfo) -> DemoReport:
    """Load the demo college with its history up to `today` (entry times in `tz`, the college's
    time zone); the caller commits. Raise DemoRefused when the database already has a roster."""
    for model, what in ((Student, "学生名单"), (Staff, "教职工"), (SchoolClass, "班级"), (Department, "系部")):
        if session.scalar(select(model.id).limit(1)) is not None:
            raise DemoRefused(Problem("demo_not_empty", {"what": what, "students": model is Student}))
    rng = random.Random(seed)
    report = DemoReport()
    report.semesters = _insert_calendar(session, today)
    cal = load_calendar(session)
    staff, classes, pupils = _insert_roster(session, rng, report)
    writer = _Writer(catalogue, cal, today, tz)
    _history(writer, rng, cal, today, staff, classes, pupils)
    writer.write(session, report)
    session.flush()
    # The dashboard's chart of the weeks: the semester's Sundays so far, as the weekly job keeps them.
    fill_weeks(session, catalogue, cal, today)
    session.add(AuditLog(
        actor="demo", action="import", entity="roster", entity_key=SOURCE,
        new_value=json.dumps({"departments": report.departments, "classes": report.classes,
                              "staff": report.staff, "students": report.students}),
    ))
    session.flush()
    return report


def _insert_calendar(session: Session, today: date) -> int:
    """Semesters of the current and the previous 学年 by the default rule (existing ones kept)."""
    first = int(academic_year_of(today)[:4])
    have = {(s.year, s.term) for s in session.scalars(select(Semester))}
    added = 0
    for year in (first - 1, first):
        for day in (date(year, 10, 1), date(year + 1, 3, 1)):
            t = default_term(day)
            if (t.year, t.term) not in have:
                session.add(Semester(year=t.year, term=t.term, start=t.start, end=t.end))
                added += 1
    session.flush()
    return added


def _student_names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` distinct plausible names, none in `taken`."""
    out: list[str] = []
    while len(out) < count:
        given = rng.choice(_GIVEN_TWO) if rng.random() < 0.7 else rng.choice(_GIVEN_ONE)
        name = rng.choice(_SURNAMES) + given
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _insert_roster(session: Session, rng: random.Random, report: DemoReport,
                   ) -> tuple[dict[str, Staff], list[SchoolClass], list[_Pupil]]:
    departments = {name: Department(name=name) for name in _DEPARTMENTS}
    session.add_all(departments.values())
    session.flush()
    staff = {
        userid: Staff(staff_no=no, name=name, wecom_userid=userid, roles=roles,
                      department_id=departments[dept].id if dept else None)
        for no, name, userid, roles, dept in _STAFF
    }
    session.add_all(staff.values())
    session.flush()
    for dept, (_office, _research, head) in _DEPT_STAFF.items():
        departments[dept].head_staff_no = staff[head].staff_no
    classes = [
        SchoolClass(code=code, name=name, department_id=departments[dept].id, grade=2000 + int(code[-4:-2]),
                    head_teacher_id=staff[head].id, counsellor_id=staff[counsellor].id)
        for code, name, dept, _major, head, counsellor in CLASSES
    ]
    session.add_all(classes)
    session.flush()
    by_code = {c.code: c for c in classes}
    teaching = [(userid, code, course) for userid, code, course in _TEACHING]
    teaching += [(PE_TEACHER, c.code, PE_COURSE) for c in classes]
    session.add_all(TeachingAssignment(staff_id=staff[u].id, class_id=by_code[c].id, course=course)
                    for u, c, course in teaching)

    taken = {name for _no, name, *_rest in _STAFF} | {name for *_x, name, _u in _FIXED_STUDENTS}
    pupils: list[_Pupil] = []
    for (code, _name, _dept, major, *_people), klass in zip(CLASSES, classes, strict=True):
        size = rng.randint(38, 42)
        fixed = {seq: (name, userid) for c, seq, name, userid in _FIXED_STUDENTS if c == code}
        names = iter(_student_names(rng, size - len(fixed), taken))
        for seq in range(1, size + 1):
            name, userid = fixed.get(seq) or (next(names), None)
            student_no = f"{klass.grade}{major}01{seq:02d}"
            row = Student(student_no=student_no, name=name, class_id=klass.id,
                          wecom_userid=userid or student_no)
            profile = rng.choices([p for p, _w in _PROFILES], [w for _p, w in _PROFILES])[0]
            if name == "张三":
                profile = "good"
            elif code == "计算机2301" and seq == 5:
                profile = "weak"  # one struggling student in the console user's class
            pupils.append(_Pupil(row, klass, profile))
    session.add_all(p.row for p in pupils)
    session.flush()

    report.departments = len(departments)
    report.classes = len(classes)
    report.staff = len(staff)
    report.students = len(pupils)
    report.teaching = len(teaching)
    return staff, classes, pupils


def _friday(d: date) -> date:
    return week_bounds(d)[0] + timedelta(days=4)


def _history(w: _Writer, rng: random.Random, cal: Calendar, today: date, staff: dict[str, Staff],
             classes: list[SchoolClass], pupils: list[_Pupil]) -> None:
    """Plan every entry of the demo history (nothing after `today`)."""
    term = cal.term_for(today)
    by_id = {s.id: s for s in staff.values()}
    dept_name = {c.department_id: dept for c, (_c, _n, dept, *_r) in zip(classes, CLASSES, strict=True)}
    office = {c.id: staff[_DEPT_STAFF[dept_name[c.department_id]][0]] for c in classes}
    research = {c.id: staff[_DEPT_STAFF[dept_name[c.department_id]][1]] for c in classes}
    head = {c.id: by_id[c.head_teacher_id] for c in classes}
    counsellor = {c.id: by_id[c.counsellor_id] for c in classes}
    courses: dict[int, list[Staff]] = {c.id: [] for c in classes}
    for userid, code, _course in _TEACHING:
        courses[next(c.id for c in classes if c.code == code)].append(staff[userid])
    roll: dict[int, list[_Pupil]] = {c.id: [] for c in classes}
    for p in pupils:
        roll[p.klass.id].append(p)

    last_teaching_day = _teaching_end(term)

    def school_day(d: date) -> bool:
        return (term.start <= d <= min(today, last_teaching_day) and d.weekday() < 5
                and (d.month, d.day) not in _HOLIDAYS)

    # Weekly: sessions observed by 任课教师, 全勤率 and 满勤率 by 班主任, 宿舍得分 by 学工办.
    this_monday = week_bounds(today)[0]
    monday = max(this_monday - timedelta(weeks=HISTORY_WEEKS - 1), week_bounds(term.start)[0])
    window_start = max(monday, term.start)
    while monday <= this_monday:
        for klass in classes:
            teachers = courses[klass.id]
            days = sorted(rng.sample(range(5), rng.choice((2, 3))))
            for n, offset in enumerate(days):
                day = monday + timedelta(days=offset)
                teacher = teachers[(n + rng.randrange(len(teachers))) % len(teachers)]
                at = time(rng.choice((8, 10, 14, 16)), 5)
                if not school_day(day):
                    continue
                for p in roll[klass.id]:
                    sid = p.row.id
                    w.add(teacher, "A02", day, 0 if rng.random() < _LATE[p.profile] else 100, at,
                          student_id=sid)
                    w.add(teacher, "A06", day, rng.choice(_A06[p.profile]), at, student_id=sid)
                    w.add(teacher, "A05", day, rng.choice(_A05[p.profile]), at, student_id=sid)
            friday = monday + timedelta(days=4)
            if not school_day(friday):
                continue
            for p in roll[klass.id]:
                w.add(head[klass.id], "A03", friday, rng.choice(_A03[p.profile]), time(17, 30),
                      student_id=p.row.id)
                w.add(office[klass.id], "B09", friday, rng.randint(*_B09[p.profile]), time(16, 0),
                      student_id=p.row.id)
            w.add(head[klass.id], "KA03", friday, rng.randint(88, 100), time(17, 35), class_id=klass.id)
        monday += timedelta(weeks=1)

    window = [window_start + timedelta(days=i) for i in range((today - window_start).days + 1)]
    window = [d for d in window if school_day(d)]

    # A few counts: 课外学习 and 与教师沟通 (班主任).
    for p in pupils:
        for code, share in (("A07", 0.15), ("A08", 0.12)):
            if window and rng.random() < share:
                times = min(rng.randint(1, 3), 1 + len(window) // 10)
                for day in sorted(rng.choices(window, k=times)):
                    w.add(head[p.klass.id], code, day, 1, time(16, 30), student_id=p.row.id)

    # 学年初: 学业计划 and 个人发展规划, in the second week of the 学年 (most students, not all).
    first_term = term if term.term == 1 else cal.previous_term(term)
    doc_day = _friday(first_term.start + timedelta(weeks=1))
    if doc_day <= today:
        for p in pupils:
            a01 = p.row.name == "张三" or p.row.wecom_userid == "lisi" or rng.random() < 0.88
            b01 = p.row.name == "张三" or (p.row.wecom_userid != "lisi" and rng.random() < 0.8)
            for code, done in (("A01", a01), ("B01", b01)):
                if done:
                    w.add(head[p.klass.id], code, doc_day, 1, time(16, 0), student_id=p.row.id)

    # 第一学期中: 职业生涯规划 submitted to the 教研室 (about three students in four).
    career_day = _friday(term.start + timedelta(weeks=7))
    if term.term == 1 and career_day <= today:
        for p in pupils:
            if p.row.name == "张三" or rng.random() < 0.75:
                w.add(research[p.klass.id], "C01", career_day, 1, time(15, 0), student_id=p.row.id)

    # 违纪频次 for a handful (学工办), 心理辅导频次 for two (辅导员, sensitive).
    if window:
        weak = [p for p in pupils if p.profile == "weak"]
        others = [p for p in pupils if p.profile != "weak" and p.row.wecom_userid not in ("zhangsan", "lisi")]
        chosen = rng.sample(weak, min(3, len(weak))) + rng.sample(others, 3)
        for i, p in enumerate(chosen):
            for day in sorted(rng.choices(window, k=2 if i == 0 else 1)):
                w.add(office[p.klass.id], "B13", day, 1, time(14, 0), student_id=p.row.id)
        counselled = [next(p for p in pupils if p.klass.code == "计算机2301" and p.profile == "weak"),
                      rng.choice([p for p in pupils if p.klass.code == "会计2301"])]
        for p in counselled:
            for day in sorted(rng.choices(window, k=rng.randint(1, 2))):
                w.add(counsellor[p.klass.id], "B12", day, 1, time(15, 30), student_id=p.row.id)

    # 学期末 points: the previous semester's, and this one's once its teaching weeks are over.
    for t in (cal.previous_term(term), term):
        end_day = _teaching_end(t)
        if end_day <= today:
            _semester_end(w, rng, t, end_day, staff[PE_TEACHER], head, office, pupils)


def _teaching_end(t: Term) -> date:
    """The Friday of the twentieth week: the last teaching day, when 学期末 points are recorded."""
    return min(_friday(t.start + timedelta(weeks=20)), t.end)


def _semester_end(w: _Writer, rng: random.Random, t: Term, end_day: date, pe: Staff,
                  head: dict[int, Staff], office: dict[int, Staff], pupils: list[_Pupil]) -> None:
    """学期学分绩, 综合素质测评, 人文素养 and 体能测试 of semester `t`, for students enrolled by then."""
    for p in pupils:
        if (p.klass.grade or 0) > int(t.year[:4]):
            continue
        sid, cid = p.row.id, p.klass.id
        lo, hi = _A09[p.profile]
        w.add(head[cid], "A09", end_day, round(rng.uniform(lo, hi), 1), time(15, 0), student_id=sid)
        lo, hi = _B07[p.profile]
        w.add(office[cid], "B07", end_day - timedelta(days=1), round(rng.uniform(lo, hi), 1),
              time(10, 0), student_id=sid)
        w.add(office[cid], "B04", end_day - timedelta(days=1), rng.randint(70, 95), time(10, 30),
              student_id=sid)
        w.add(pe, "B08", end_day - timedelta(days=7), round(min(98.0, max(55.0, rng.gauss(80, 8))), 1),
              time(11, 0), student_id=sid)
