"""The demo college: roster, calendar, history placed by the real rules, cards that show something."""

from __future__ import annotations

import json
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from core.render import render
from models.authz import load_actor, may_record
from models.cards import class_card, student_card
from models.catalogue import ROLES
from models.io.demo import DEFAULT_USER, DemoRefused, DemoReport, load_demo
from models.io.demo_people import demo_people
from models.periods import period_key
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
)
from models.scores import load_calendar

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def demo(session, catalogue, today) -> DemoReport:
    report = load_demo(session, catalogue, today, tz=TZ)
    session.commit()
    return report


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _class(session, code: str) -> SchoolClass:
    return session.scalar(select(SchoolClass).where(SchoolClass.code == code))


def test_roster_shape(session, demo):
    assert {d.name for d in session.scalars(select(Department))} == {"信息工程系", "经济管理系"}
    classes = session.scalars(select(SchoolClass)).all()
    assert {c.code for c in classes} == {"计算机2301", "软件技术2301", "网络2401", "会计2301", "电商2401", "物流2501"}
    assert {c.code: c.grade for c in classes}["物流2501"] == 2025
    assert all(c.head_teacher_id and c.counsellor_id for c in classes)
    students = session.scalars(select(Student)).all()
    assert 200 <= len(students) <= 280
    assert all(s.student_no and s.wecom_userid for s in students)
    staff = session.scalars(select(Staff)).all()
    assert all(s.staff_no and s.wecom_userid for s in staff)
    assert set(ROLES) <= set().union(*(s.role_set for s in staff))
    assert demo.students == len(students) and demo.staff == len(staff) and demo.classes == 6
    assert demo.entries == _count(session, ScoreEntry)
    summary = render("cli/demo_loaded.txt", r=demo)
    assert "演示" in summary and str(demo.students) in summary


def test_names_unique_but_one_planned_duplicate(session, demo):
    names = Counter(session.scalars(select(Student.name)))
    assert {name for name, n in names.items() if n > 1} == {"刘洋"}
    assert names["刘洋"] == 2
    liuyang = session.scalars(select(Student).where(Student.name == "刘洋")).all()
    assert {s.school_class.code for s in liuyang} == {"计算机2301"}
    staff_names = set(session.scalars(select(Staff.name)))
    assert not staff_names & set(names)


def test_fixed_userids(session, demo):
    assert DEFAULT_USER == "wangfang"
    cs = _class(session, "计算机2301")
    it = session.scalar(select(Department).where(Department.name == "信息工程系"))

    wangfang = load_actor(session, "wangfang")
    assert wangfang.name == "王芳" and "班主任" in wangfang.roles and wangfang.head_classes == {cs.id}
    for userid, name, no in (("zhangsan", "张三", "2023010101"), ("lisi", "李四", "2023010102")):
        actor = load_actor(session, userid)
        assert actor.is_student and actor.name == name and actor.student_class_id == cs.id
        assert session.get(Student, actor.student_id).student_no == no
    chenjing = load_actor(session, "chenjing")
    assert chenjing.name == "陈静" and "任课教师" in chenjing.roles and cs.id in chenjing.taught_classes
    liuwei = load_actor(session, "liuwei")
    assert liuwei.name == "刘伟" and "辅导员" in liuwei.roles and cs.id in liuwei.counsel_classes
    assert len(liuwei.counsel_classes) == 3
    zhaoqiang = load_actor(session, "zhaoqiang")
    assert "体育老师" in zhaoqiang.roles and len(zhaoqiang.taught_classes) == 6
    for userid, role in (("sunli", "学工办"), ("zhoujie", "教研室"), ("wujun", "系部主任")):
        actor = load_actor(session, userid)
        assert role in actor.roles and actor.department_id == it.id and cs.id in actor.department_classes
    assert it.head_staff_no == session.scalar(select(Staff.staff_no).where(Staff.wecom_userid == "wujun"))
    assert all(d.head_staff_no for d in session.scalars(select(Department)))
    assert "院领导" in load_actor(session, "zhengyuan").roles
    assert "管理员" in load_actor(session, "admin").roles
    # Every class has 任课 rows with course names, 体育 included.
    for c in session.scalars(select(SchoolClass)):
        courses = set(session.scalars(select(TeachingAssignment.course)
                                      .where(TeachingAssignment.class_id == c.id)))
        assert "体育" in courses and len(courses) >= 3


def test_demo_people(session, demo):
    people = demo_people(session)
    userids = [u for u, _name, _scope in people]
    assert userids[0] == DEFAULT_USER
    assert people[0] == ("wangfang", "王芳", "班主任 · 计算机2301")
    students = [p for p in people if p[2].startswith("学生")]
    assert 4 <= len(students) <= 8
    assert people[-len(students):] == students  # staff first
    assert {"zhangsan", "lisi", "admin", "zhengyuan"} <= set(userids)
    assert sum(1 for p in students if p[1] == "刘洋") == 2
    assert len(set(userids)) == len(userids)


def test_history_placed_by_the_calendar(session, catalogue, today, demo):
    assert session.scalar(select(func.max(ScoreEntry.occurred_on))) <= today
    assert _count(session, Semester) == 4
    cal = load_calendar(session)
    term = cal.term_for(today)
    prev = cal.previous_term(term)
    rows = session.execute(select(ScoreEntry.point_code, ScoreEntry.occurred_on, ScoreEntry.period_key,
                                  ScoreEntry.semester_key, ScoreEntry.source)).all()
    assert 15_000 <= len(rows) <= 60_000
    for code, day, key, sem, source in rows:
        assert key == period_key(catalogue.by_code[code].period, day, cal)
        assert sem == cal.term_for(day).key
        assert source == "demo"
    codes = Counter(r.point_code for r in rows)
    for code in ("A01", "A02", "A03", "A05", "A06", "A07", "A08", "B01", "B09", "B12", "B13", "KA03", "C01"):
        assert codes[code] > 0, code
    # The previous semester's 学期末 points are there, for value added at a semester's start.
    for code in ("A09", "B07", "B08", "B04"):
        assert session.scalar(select(func.count()).where(
            ScoreEntry.point_code == code, ScoreEntry.semester_key == prev.key)) > 0
    # Documents for most students, not all.
    students = _count(session, Student)
    assert students * 0.6 < codes["A01"] < students
    # Weekly 全勤率 covers at least six weeks of the current semester.
    weeks = set(session.scalars(select(ScoreEntry.period_key).where(
        ScoreEntry.point_code == "A03", ScoreEntry.semester_key == term.key)))
    assert len(weeks) >= 6


def test_batches_and_audit(session, catalogue, demo):
    batches = session.scalars(select(RecordingBatch)).all()
    assert len(batches) == demo.batches > 0
    assert all(b.source == "demo" and b.recorder_id for b in batches)
    per_batch = dict(session.execute(
        select(ScoreEntry.batch_id, func.count()).group_by(ScoreEntry.batch_id)).all())
    assert set(per_batch) == {b.id for b in batches}
    audits = session.scalars(select(AuditLog).where(AuditLog.entity == "recording_batch")).all()
    assert len(audits) == len(batches)
    for a in audits:
        assert a.action == "import"
        assert json.loads(a.new_value)["entries"] == per_batch[int(a.entity_key)]
    # Every entry could have been recorded by its recorder under the rules of §2.
    actors = {s.id: load_actor(session, s.wecom_userid) for s in session.scalars(select(Staff))}
    combos = session.execute(
        select(ScoreEntry.point_code, ScoreEntry.recorder_id,
               func.coalesce(Student.class_id, ScoreEntry.class_id))
        .outerjoin(Student, Student.id == ScoreEntry.student_id).distinct()).all()
    for code, recorder, class_id in combos:
        assert may_record(actors[recorder], catalogue.by_code[code], class_id), (code, recorder)


def test_cards_show_subtotals_and_value_added(session, catalogue, today, demo):
    cal = load_calendar(session)
    zhangsan = session.scalar(select(Student).where(Student.wecom_userid == "zhangsan"))
    card, latest = student_card(session, catalogue, cal, zhangsan.id, today)
    for domain in ("学业发展", "个人发展", "职业发展"):
        assert card.subtotal(domain) is not None, domain
    assert card.total is not None
    assert card.value_added is not None
    assert latest and all(e.occurred_on <= today for e in latest)

    cs = _class(session, "计算机2301")
    ccard = class_card(session, catalogue, cal, cs.id, today)
    lines = {line.point.code: line for d in ccard.domains for line in d.lines}
    assert "KA02" in lines and 80 <= lines["KA02"].value.value <= 100
    assert "KA03" in lines
    assert ccard.total is not None and ccard.value_added is not None


def test_loading_twice_is_refused(session, catalogue, today, demo):
    before = _count(session, ScoreEntry), _count(session, Student)
    with pytest.raises(DemoRefused) as refused:
        load_demo(session, catalogue, today, tz=TZ)
    assert render("errors/problem.txt", p=refused.value.problems[0]) == \
        "数据库中已有学生名单，演示数据只能装入空数据库（不会重复装入）。"
    session.rollback()
    assert (_count(session, ScoreEntry), _count(session, Student)) == before
