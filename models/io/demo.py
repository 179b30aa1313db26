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
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from models.catalogue import ROLES, Catalogue
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

DEFAULT_USER = "wangfang"  # the 班主任 the console opens as
HISTORY_WEEKS = 16  # weeks of the current semester filled in, counting back from today's week
SOURCE = "demo"

IT, EM = "信息工程系", "经济管理系"
_DEPARTMENTS = (IT, EM)

# 班级编号, 班级名称, 系部, 专业序号 (used in the 学号), 班主任 userid, 辅导员 userid.
_CLASSES = (
    ("计算机2301", "计算机应用技术2301班", IT, "01", "wangfang", "liuwei"),
    ("软件技术2301", "软件技术2301班", IT, "02", "yangfan", "liuwei"),
    ("网络2401", "计算机网络技术2401班", IT, "03", "huangli", "liuwei"),
    ("会计2301", "大数据与会计2301班", EM, "04", "xuna", "caoming"),
    ("电商2401", "电子商务2401班", EM, "05", "fengchao", "caoming"),
    ("物流2501", "现代物流管理2501班", EM, "06", "hanmei", "caoming"),
)

# 工号, 姓名, 企业微信账号, 角色, 系部 (None: college-wide).
_STAFF = (
    ("10001", "王芳", "wangfang", "班主任", IT),
    ("10002", "杨帆", "yangfan", "班主任", IT),
    ("10003", "黄丽", "huangli", "班主任", IT),
    ("10004", "刘伟", "liuwei", "辅导员", IT),
    ("10005", "陈静", "chenjing", "任课教师", IT),
    ("10006", "林涛", "lintao", "任课教师", IT),
    ("10007", "何敏", "hemin", "任课教师", IT),
    ("10008", "郭磊", "guolei", "任课教师", IT),
    ("10009", "马琳", "malin", "任课教师", IT),
    ("10010", "孙丽", "sunli", "学工办", IT),
    ("10011", "周杰", "zhoujie", "教研室", IT),
    ("10012", "吴军", "wujun", "系部主任", IT),
    ("20001", "许娜", "xuna", "班主任", EM),
    ("20002", "冯超", "fengchao", "班主任", EM),
    ("20003", "韩梅", "hanmei", "班主任", EM),
    ("20004", "曹明", "caoming", "辅导员", EM),
    ("20005", "邓洁", "dengjie", "任课教师", EM),
    ("20006", "彭辉", "penghui", "任课教师", EM),
    ("20007", "蒋燕", "jiangyan", "任课教师", EM),
    ("20008", "田宇", "tianyu", "任课教师", EM),
    ("20009", "袁媛", "yuanyuan", "学工办", EM),
    ("20010", "邱红", "qiuhong", "教研室", EM),
    ("20011", "潘刚", "pangang", "系部主任", EM),
    ("30001", "赵强", "zhaoqiang", "体育老师", None),
    ("30002", "郑远", "zhengyuan", "院领导", None),
    ("30003", "钱悦", "admin", "管理员", None),
)

# 任课: userid, 班级编号, 课程. The 体育老师 teaches 体育 to every class (added below).
_TEACHING = (
    ("chenjing", "计算机2301", "Python程序设计"),
    ("lintao", "计算机2301", "数据库原理与应用"),
    ("hemin", "计算机2301", "计算机网络基础"),
    ("chenjing", "软件技术2301", "Python程序设计"),
    ("guolei", "软件技术2301", "Java程序设计"),
    ("malin", "软件技术2301", "软件测试技术"),
    ("hemin", "网络2401", "路由与交换技术"),
    ("lintao", "网络2401", "数据库原理与应用"),
    ("malin", "网络2401", "Linux系统管理"),
    ("dengjie", "会计2301", "中级财务会计"),
    ("tianyu", "会计2301", "经济法基础"),
    ("dengjie", "会计2301", "成本会计"),
    ("penghui", "电商2401", "电子商务概论"),
    ("jiangyan", "电商2401", "网络营销"),
    ("tianyu", "电商2401", "经济学基础"),
    ("jiangyan", "物流2501", "物流管理基础"),
    ("penghui", "物流2501", "电子商务基础"),
    ("tianyu", "物流2501", "经济学基础"),
)
PE_TEACHER, PE_COURSE = "zhaoqiang", "体育"
# Department-level people, by department.
_DEPT_STAFF = {IT: ("sunli", "zhoujie", "wujun"), EM: ("yuanyuan", "qiuhong", "pangang")}

# Fixed students: 班级编号, 序号 in class, 姓名, userid (None: the 学号).
_FIXED_STUDENTS = (
    ("计算机2301", 1, "张三", "zhangsan"),
    ("计算机2301", 2, "李四", "lisi"),
    ("计算机2301", 17, "刘洋", None),
    ("计算机2301", 31, "刘洋", None),
)
DUPLICATE_NAME = "刘洋"

_SURNAMES = (
    "王王王王李李李李张张张张刘刘刘陈陈陈杨杨黄黄赵赵吴吴周周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩"
    "冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦"
    "邱江尹薛段雷侯龙史陶黎贺顾毛郝龚邵万严武戴孔汤"
)
_GIVEN_TWO = (
    "子涵 梓萱 浩然 宇轩 欣怡 雨欣 佳怡 俊杰 志强 家豪 思远 嘉怡 雨桐 晨曦 一鸣 天宇 博文 诗涵 梦瑶 "
    "雅琪 晓东 晓燕 海涛 建华 文博 子轩 梓涵 思彤 若曦 明轩 皓轩 嘉欣 佳琪 欣然 雨萱 可馨 俊豪 宇航 "
    "泽宇 子豪 一诺 梓轩 思琪 静怡 嘉豪 浩宇 鑫磊 晓雯 丽娜 文静 志伟 国栋 春燕 海燕 振宇 佳豪 梦琪 "
    "雨涵 紫涵 思雨 婉婷 心怡 子怡 晨阳 志豪 家乐 鹏飞 嘉伟 宏伟 俊熙 逸飞 雅婷 晓丽 文杰 天乐 "
    "思源 雨泽 欣妍 佳慧 明杰 宇辰 嘉宁 瑞雪 诗琪 梓豪 俊宇 昊天 书瑶"
).split()
_GIVEN_ONE = "伟强磊军勇杰涛明超浩鹏辉鑫博斌凯晨阳帅飞龙宁峰旭昊敏静丽艳娟婷雪琳慧颖欣倩瑶蕾悦璐萱"

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

    def summary(self) -> str:
        """A short Chinese summary for the command line."""
        span = (f"，日期 {self.first_day:%Y-%m-%d} 至 {self.last_day:%Y-%m-%d}"
                if self.first_day and self.last_day else "")
        return (
            f"已装入演示学院：{self.departments} 个系部、{self.classes} 个班级、{self.students} 名学生、"
            f"{self.staff} 名教职工（任课 {self.teaching} 条，校历 {self.semesters} 个学期）；"
            f"采分记录 {self.entries} 条，分 {self.batches} 次录入{span}。"
            f"控制台默认身份：王芳（{DEFAULT_USER}，计算机2301 班主任）；"
            f"学生可用 zhangsan（张三）试“储值卡”。"
        )


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

    def __init__(self, catalogue: Catalogue, cal: Calendar, today: date) -> None:
        self.catalogue = catalogue
        self.cal = cal
        self.today = today
        self.tz = ZoneInfo(os.environ.get("APP_TIMEZONE") or "Asia/Shanghai")
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


def load_demo(session: Session, catalogue: Catalogue, today: date, seed: int = 7) -> DemoReport:
    """Load the demo college with its history up to `today`; the caller commits."""
    if session.scalar(select(Student.id).limit(1)) is not None:
        raise ValueError("数据库中已有学生名单，演示数据只能装入空数据库（不会重复装入）。")
    for model, what in ((Staff, "教职工"), (SchoolClass, "班级"), (Department, "系部")):
        if session.scalar(select(model.id).limit(1)) is not None:
            raise ValueError(f"数据库中已有{what}，演示数据只能装入空数据库。")
    rng = random.Random(seed)
    report = DemoReport()
    report.semesters = _insert_calendar(session, today)
    cal = load_calendar(session)
    staff, classes, pupils = _insert_roster(session, rng, report)
    writer = _Writer(catalogue, cal, today)
    _history(writer, rng, cal, today, staff, classes, pupils)
    writer.write(session, report)
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
        for code, name, dept, _major, head, counsellor in _CLASSES
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
    for (code, _name, _dept, major, *_people), klass in zip(_CLASSES, classes, strict=True):
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
    dept_name = {c.department_id: dept for c, (_c, _n, dept, *_r) in zip(classes, _CLASSES, strict=True)}
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

def _role_text(roles: set[str]) -> str:
    return "、".join(r for r in ROLES if r in roles)


def _classes_text(codes: list[str]) -> str:
    return "、".join(codes) if len(codes) <= 3 else f"{codes[0]}等{len(codes)}个班"


def demo_people(session: Session) -> list[tuple[str, str, str]]:
    """(userid, name, "角色 · scope") for `/who`: every staff member, then about six students."""
    classes = session.scalars(select(SchoolClass).order_by(SchoolClass.code)).all()
    code_of = {c.id: c.code for c in classes}
    demo_order = {code: i for i, (code, *_rest) in enumerate(_CLASSES)}
    order = {c.code: i for i, c in enumerate(sorted(classes, key=lambda c: (demo_order.get(c.code, 99), c.code)))}
    dept_names = {d.id: d.name for d in session.scalars(select(Department))}
    heads = {d.head_staff_no: d.id for d in session.scalars(select(Department)) if d.head_staff_no}
    taught: dict[int, set[str]] = {}
    for staff_id, class_id in session.execute(
            select(TeachingAssignment.staff_id, TeachingAssignment.class_id)):
        taught.setdefault(staff_id, set()).add(code_of[class_id])
    out: list[tuple[str, str, str]] = []
    for s in session.scalars(select(Staff).order_by(Staff.staff_no)):
        roles = set(s.role_set)
        mine = {code_of[c.id] for c in classes if s.id in (c.head_teacher_id, c.counsellor_id)}
        if any(c.head_teacher_id == s.id for c in classes):
            roles.add("班主任")
        if any(c.counsellor_id == s.id for c in classes):
            roles.add("辅导员")
        if s.staff_no in heads:
            roles.add("系部主任")
        dept = dept_names.get(s.department_id or heads.get(s.staff_no, -1))
        if roles & {"院领导", "管理员"}:
            scope = "全院"
        elif roles & {"学工办", "教研室", "系部主任"} and dept:
            scope = dept
        else:
            codes = sorted(mine | taught.get(s.id, set()), key=lambda c: order.get(c, 99))
            scope = _classes_text(codes) if codes else (dept or "")
        out.append((s.wecom_userid or s.staff_no, s.name, f"{_role_text(roles) or '教职工'} · {scope}"))

    # Students: the documented ones first, then one per class, alternating departments.
    picked = list(session.scalars(
        select(Student).where(Student.wecom_userid.in_(("zhangsan", "lisi"))).order_by(Student.student_no)))
    dup_class = session.scalar(select(SchoolClass.id).where(SchoolClass.code == _CLASSES[0][0]))
    picked += session.scalars(select(Student).where(
        Student.name == DUPLICATE_NAME, Student.class_id == dup_class).order_by(Student.student_no)).all()
    seen_classes = {p.class_id for p in picked}
    per_dept = Counter(c.department_id for c in classes if c.id in seen_classes)
    rest = [c for c in classes if c.id not in seen_classes]
    while len(picked) < 6 and rest:
        rest.sort(key=lambda c: (per_dept[c.department_id], order.get(c.code, 99)))
        klass = rest.pop(0)
        first = session.scalar(select(Student).where(Student.class_id == klass.id)
                               .order_by(Student.student_no).limit(1))
        if first is not None:
            picked.append(first)
            per_dept[klass.department_id] += 1
    out += [(p.wecom_userid or p.student_no, p.name, f"学生 · {code_of.get(p.class_id, '')}") for p in picked]
    return out

