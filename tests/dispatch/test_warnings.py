"""Early warnings: each default rule on both sides of its threshold, privacy routing, one open
warning per (student, category), escalation, the weekly cap, closing the loop, the measures,
and the message reaching a (fake) WeCom API."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot import service as runtime
from core.config import ROOT, load_settings
from models.io.demo import load_demo
from models.periods import place
from models.risk import measures
from models.risk.matching import find
from models.risk.rules import RulesError, parse_rules, rule_book
from models.schema import (
    OutboxMessage,
    RiskNotice,
    RiskWarning,
    RiskWarningEvent,
    ScoreEntry,
    Staff,
    Student,
)
from models.scores import load_calendar
from scheduler.delivery import make_deliverer
from scheduler.notify.warnings import rules_error_text
from scheduler.registry import JobContext
from scheduler.risk_jobs import risk_scan, warning_escalation
from tests.fakes.chat import make_service, say
from tests.fakes.factories import small_college
from tests.fakes.fake_wecom import FakeWeCom

TZ = ZoneInfo("Asia/Shanghai")
TODAY = date(2025, 11, 19)  # a Wednesday of week 2025-W47, mid first semester
RULES = ROOT / "models" / "risk" / "risk_rules.toml"
SETTINGS = load_settings({"secret_key": "test"})  # the shipped rules file, no policy overrides


# ── helpers ──────────────────────────────────────────────────────────────────

@pytest.fixture
def svc(college, db_url, redis_url):
    return make_service(db_url, TODAY, redis_url)


@pytest.fixture
def book(catalogue):
    return rule_book(SETTINGS, catalogue)


def sid(session: Session, name: str) -> int:
    return session.scalar(select(Student.id).where(Student.name == name))


def staff_id(session: Session, userid: str) -> int:
    return session.scalar(select(Staff.id).where(Staff.wecom_userid == userid))


def put(session: Session, catalogue, student: str, code: str, day: date, *values: float,
        recorder: str = "wangfang") -> None:
    """Entries as a recording would place them, written directly (history older than chat allows)."""
    point = catalogue.by_code[code]
    at = place(point.period, day, load_calendar(session))
    for value in values:
        session.add(ScoreEntry(point_code=code, student_id=sid(session, student), period_key=at.period_key,
                               semester_key=at.semester_key, occurred_on=at.occurred_on, value=float(value),
                               recorder_id=staff_id(session, recorder), batch_id=0, source="test"))
    session.commit()


def weeks_back(*values: float, start: date = TODAY) -> list[tuple[date, float]]:
    """One value per week, this week first."""
    return [(start - timedelta(weeks=i), v) for i, v in enumerate(values)]


def findings(session, catalogue, day: date = TODAY) -> set[tuple[str, str]]:
    """(student name, rule id) of every automatic rule that matches on `day`."""
    book = rule_book(SETTINGS, catalogue)
    found = find(session, book, catalogue, load_calendar(session), day, book.automatic())
    names = dict(session.execute(select(Student.id, Student.name)).all())
    return {(names[f.student_id], f.rule.id) for f in found}


def job_ctx(session, catalogue, day: date, at: time = time(6, 40), settings=SETTINGS) -> JobContext:
    return JobContext(session=session, now=datetime.combine(day, at, TZ), catalogue=catalogue,
                      settings=settings)


def run(job, session, catalogue, day: date, at: time = time(6, 40), settings=SETTINGS) -> str:
    result = job(job_ctx(session, catalogue, day, at, settings))
    session.commit()
    return result


def warnings(session) -> list[RiskWarning]:
    session.expire_all()
    return list(session.scalars(select(RiskWarning).order_by(RiskWarning.id)))


def messages(session, warning_id: int | None = None) -> list[OutboxMessage]:
    session.expire_all()
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if warning_id is not None:
        query = query.where(OutboxMessage.purpose == "warning",
                            OutboxMessage.period_key.like(f"{warning_id}/%"))
    return list(session.scalars(query))


def recipients(session, warning_id: int) -> dict[str, list[str]]:
    """userid → the events they were sent, for one warning."""
    out: dict[str, list[str]] = {}
    for m in messages(session, warning_id):
        out.setdefault(m.recipient, []).append(m.period_key.split("/", 1)[1])
    return out


def reached(session, warning_id: int) -> set[str]:
    """Everyone told of a warning, alone or in a weekly bundle."""
    bundled = {m.recipient for m in messages(session) if m.purpose == "warning_bundle" and f"#{warning_id}【" in m.body}
    return set(recipients(session, warning_id)) | bundled


def rules_of(session, warning: RiskWarning) -> set[str]:
    return set(session.scalars(select(RiskWarningEvent.rule_id).where(
        RiskWarningEvent.warning_id == warning.id, RiskWarningEvent.rule_id.is_not(None))))


# ── the rules file ───────────────────────────────────────────────────────────

def test_the_rules_file_documents_every_default_and_checks_privacy(catalogue, book):
    automatic = book.automatic()
    assert {r.id for r in automatic} >= {
        "absence_chronic", "absence_severe", "lateness", "homework", "below_pass", "academic_decline",
        "discipline_once", "discipline_repeated", "discipline_sanction", "counselling_rising",
        "employment_unrecorded", "career_adaptability_low"}
    assert all(r.why.strip() for r in automatic), "every default explains itself"
    assert "10 %" in book.by_id["absence_chronic"].why  # the ABC attendance threshold
    assert set(book.categories) == {"学业", "违纪", "心理健康", "理财", "就业困难"}
    assert book.category("心理").name == "心理健康" and book.category("经济").name == "理财"
    assert book.policy.escalate_after_days == 3 and book.policy.weekly_cap == 10
    with open(RULES, "rb") as fh:
        data = tomllib.load(fh)
    bad = dict(data, rule=[dict(r, recipients=["辅导员", "任课教师"]) if r["id"] == "counselling_rising" else r
                           for r in data["rule"]])
    with pytest.raises(RulesError) as error:
        parse_rules(bad, catalogue)
    assert rules_error_text(error.value) == "counselling_rising: 敏感预警只能发给 学工办、班主任、辅导员"
    bad = dict(data, rule=[dict(r, points=["ZZ9"]) if r["id"] == "homework" else r for r in data["rule"]])
    with pytest.raises(RulesError) as error:
        parse_rules(bad, catalogue)
    assert rules_error_text(error.value) == "homework: ZZ9 不是个人采分点"
    bad = dict(data, rule=[dict(r, when="avg < 90") if r["id"] == "lateness" else r for r in data["rule"]])
    with pytest.raises(RulesError) as error:
        parse_rules(bad, catalogue)
    assert rules_error_text(error.value) == "lateness: when='avg < 90' 应形如 \"mean < 90\"（mean|sum|latest|count）"
    assert parse_rules(data, catalogue, {"WARNING_WEEKLY_CAP": "3"}).policy.weekly_cap == 3
    capped = load_settings({"secret_key": "test", "risk_policy_overrides": {"WARNING_WEEKLY_CAP": "3"}})
    assert rule_book(capped, catalogue).policy.weekly_cap == 3 and book.policy.weekly_cap == 10


def test_a_mistake_in_the_rules_file_stops_the_service_at_start_in_words(tmp_path, db_url):
    with open(RULES, "rb") as fh:
        text = fh.read().decode("utf-8")
    bad = tmp_path / "rules.toml"
    bad.write_text(text.replace('when = "mean < 90"', 'when = "avg < 90"', 1), encoding="utf-8")
    settings = load_settings({"database_url": db_url, "secret_key": "t", "risk_rules_path": bad})
    with pytest.raises(RuntimeError, match=r"when='avg < 90' 应形如 \"mean < 90\"（mean\|sum\|latest\|count）"):
        runtime.make_service(settings)


# ── each default rule, on both sides of its threshold ────────────────────────

def test_attendance_below_90_over_four_weeks_warns_and_below_80_is_serious(college, session, catalogue):
    for student, values in (("张三", (85, 90)), ("李四", (90, 90)), ("王五", (50,)), ("赵六", (80, 75, 100, 100))):
        for day, value in weeks_back(*values):
            put(session, catalogue, student, "A03", day, value, recorder="wangfang")
    put(session, catalogue, "钱七", "A03", TODAY - timedelta(days=35), 10)  # outside the four weeks
    found = findings(session, catalogue)
    assert ("张三", "absence_chronic") in found and ("张三", "absence_severe") not in found
    assert not {f for f in found if f[0] in ("李四", "王五", "钱七")}  # 90 exactly; one week only; too old
    assert ("赵六", "absence_chronic") in found  # 88.75 over four weeks
    put(session, catalogue, "李四", "A03", TODAY - timedelta(days=21), 55)
    assert {("李四", "absence_chronic"), ("李四", "absence_severe")} <= findings(session, catalogue)  # 78.3


def test_lateness_needs_four_sessions_below_90(college, session, catalogue):
    day = TODAY - timedelta(days=2)
    put(session, catalogue, "张三", "A02", day, 100, 100, 100, 50, recorder="chenjing")  # 87.5
    put(session, catalogue, "李四", "A02", day, 100, 100, 100, 60, recorder="chenjing")  # 90
    put(session, catalogue, "王五", "A02", day, 0, 0, 0, recorder="chenjing")  # three sessions only
    found = findings(session, catalogue)
    assert ("张三", "lateness") in found
    assert ("李四", "lateness") not in found and ("王五", "lateness") not in found


def test_homework_below_70_warns_the_class_head_and_the_teacher_who_recorded_it(college, session, catalogue):
    day = TODAY - timedelta(days=1)
    put(session, catalogue, "张三", "A06", day, 60, 70, 70, 70, recorder="chenjing")  # 67.5
    put(session, catalogue, "李四", "A06", day, 70, 70, 70, 70, recorder="chenjing")  # 70
    found = findings(session, catalogue)
    assert ("张三", "homework") in found and ("李四", "homework") not in found
    run(risk_scan, session, catalogue, TODAY)
    [w] = warnings(session)
    # The PE teacher of the class did not record it: not told.
    assert set(recipients(session, w.id)) == {"wangfang", "chenjing"}


def test_a_grade_below_pass_warns_and_sixty_does_not(college, session, catalogue):
    put(session, catalogue, "张三", "A09", TODAY, 59.5)
    put(session, catalogue, "李四", "A09", TODAY, 60)
    put(session, catalogue, "王五", "B02", TODAY, 55, recorder="chenjing")
    put(session, catalogue, "赵六", "C02", TODAY, 60, recorder="chenjing")
    found = findings(session, catalogue)
    assert {("张三", "below_pass"), ("王五", "below_pass")} <= found
    assert ("李四", "below_pass") not in found and ("赵六", "below_pass") not in found


def test_discipline_once_is_watch_three_times_or_a_major_demerit_is_serious(college, session, catalogue):
    put(session, catalogue, "张三", "B13", TODAY, 1, recorder="sunli")
    put(session, catalogue, "李四", "B13", TODAY - timedelta(days=5), 1, 1, 1, recorder="sunli")
    put(session, catalogue, "王五", "B14", TODAY, 2, recorder="sunli")  # 严重警告
    put(session, catalogue, "赵六", "B14", TODAY, 3, recorder="sunli")  # 记过
    put(session, catalogue, "钱七", "B13", date(2025, 8, 20), 1, recorder="sunli")  # last semester
    found = findings(session, catalogue)
    assert ("张三", "discipline_once") in found and ("张三", "discipline_repeated") not in found
    assert ("李四", "discipline_repeated") in found
    assert not {f for f in found if f[0] in ("王五", "钱七")}
    assert ("赵六", "discipline_sanction") in found
    run(risk_scan, session, catalogue, TODAY)
    by_student = {w.student.name: w for w in warnings(session)}
    assert (by_student["张三"].level, by_student["李四"].level, by_student["赵六"].level) == ("关注", "严重", "严重")
    assert by_student["赵六"].sensitive and not by_student["李四"].sensitive  # 处罚级别 is a sensitive point


def test_counselling_twice_within_a_month_warns_only_those_who_see_sensitive_data(college, session, catalogue):
    put(session, catalogue, "张三", "B12", TODAY - timedelta(days=20), 1, recorder="liuwei")
    put(session, catalogue, "张三", "B12", TODAY - timedelta(days=3), 1, recorder="liuwei")
    put(session, catalogue, "李四", "B12", TODAY - timedelta(days=45), 1, recorder="liuwei")
    put(session, catalogue, "李四", "B12", TODAY - timedelta(days=3), 1, recorder="liuwei")
    found = findings(session, catalogue)
    assert ("张三", "counselling_rising") in found and ("李四", "counselling_rising") not in found
    run(risk_scan, session, catalogue, TODAY)
    [w] = warnings(session)
    assert w.category == "心理健康" and w.sensitive
    assert set(recipients(session, w.id)) == {"liuwei", "wangfang"}


@pytest.fixture
def final_year(session):
    return small_college(session, with_calendar=True)  # term 2 ends 2026-07-10: graduation of grade 2023


def test_final_year_without_employment_match_within_four_months_of_graduation(final_year, session, catalogue):
    may = date(2026, 5, 1)
    put(session, catalogue, "李四", "C13", date(2026, 4, 20), 2, recorder="zhoujie")  # 对口
    put(session, catalogue, "王五", "C06", date(2026, 4, 20), 55, recorder="zhoujie")
    put(session, catalogue, "赵六", "C06", date(2026, 4, 20), 60, recorder="zhoujie")
    found = findings(session, catalogue, may)
    assert ("张三", "employment_unrecorded") in found and ("李四", "employment_unrecorded") not in found
    assert ("王五", "career_adaptability_low") in found and ("赵六", "career_adaptability_low") not in found
    # More than four months before graduation: nothing yet.
    assert not {f for f in findings(session, catalogue, date(2026, 3, 1)) if f[1].startswith(("employ", "career"))}


def test_a_domain_subtotal_well_below_the_students_own_level_is_a_watch(college, session, catalogue):
    before, recent = TODAY - timedelta(days=50), TODAY - timedelta(days=8)
    for student, now_values in (("张三", (90, 70, 90)), ("李四", (95, 80, 95))):
        put(session, catalogue, student, "A03", before, 100)
        put(session, catalogue, student, "A03", before - timedelta(days=7), 100)
        put(session, catalogue, student, "A06", before, 100, 100, 100, 100, recorder="chenjing")
        put(session, catalogue, student, "A02", before, 100, 100, 100, 100, recorder="chenjing")
        a03, a06, a02 = now_values
        put(session, catalogue, student, "A03", recent, a03)
        put(session, catalogue, student, "A03", recent - timedelta(days=7), a03)
        put(session, catalogue, student, "A06", recent, a06, a06, a06, a06, recorder="chenjing")
        put(session, catalogue, student, "A02", recent, a02, a02, a02, a02, recorder="chenjing")
    found = findings(session, catalogue)
    # 张三: 100 → 83.3 (a fall of 16.7) with no single rule breached; 李四: 100 → 90.
    assert {f for f in found if f[0] == "张三"} == {("张三", "academic_decline")}
    assert not {f for f in found if f[0] == "李四"}


# ── one open warning per (student, category) ─────────────────────────────────

def test_three_discipline_records_make_one_serious_warning_to_head_and_counsellor(svc, session, catalogue):
    for _ in range(3):
        assert "已记录" in say(svc, "sunli", "违纪频次 张三")
    [w] = warnings(session)
    assert (w.category, w.level, w.status) == ("违纪", "严重", "open")
    assert recipients(session, w.id) == {"wangfang": ["opened", "raised:严重"], "liuwei": ["opened", "raised:严重"]}
    body = messages(session, w.id)[-1].body
    assert "张三" in body and "违纪频次 本学期 3次（最近 11-19）" in body and f"处理 #{w.id}" in body
    kinds = [e.kind for e in session.scalars(select(RiskWarningEvent).where(RiskWarningEvent.warning_id == w.id)
                                              .order_by(RiskWarningEvent.id))]
    assert kinds == ["opened", "evidence", "raised", "evidence"]  # 1, 2, then 3: raised by discipline_repeated
    # The daily scan, twice, finds nothing new.
    before = len(messages(session))
    assert "0 opened, 0 raised, 0 updated" in run(risk_scan, session, catalogue, TODAY)
    run(risk_scan, session, catalogue, TODAY)
    assert len(messages(session)) == before and len(warnings(session)) == 1


def test_the_database_refuses_a_second_open_warning_for_the_same_student_and_category(college, session):
    student = sid(session, "张三")
    session.add(RiskWarning(student_id=student, category="学业", level="关注", open_key=f"{student}/学业"))
    session.commit()
    session.add(RiskWarning(student_id=student, category="学业", level="预警", open_key=f"{student}/学业"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    # Closed warnings have no key: any number of them.
    session.add_all([RiskWarning(student_id=student, category="学业", level="关注", status="handled", open_key=None)
                     for _ in range(2)])
    session.commit()


def test_handled_evidence_does_not_come_back_new_evidence_after_cooldown_does(svc, session, catalogue):
    say(svc, "sunli", "违纪频次 张三")
    [w] = warnings(session)
    assert "已记录处理" in say(svc, "wangfang", f"处理 #{w.id} 已约谈")
    run(risk_scan, session, catalogue, TODAY + timedelta(days=10))
    assert len(warnings(session)) == 1  # same evidence: handled is handled
    # A second 违纪 within the cooldown (7 days) waits; after it, a new warning opens.
    put(session, catalogue, "张三", "B13", TODAY + timedelta(days=1), 1, recorder="sunli")
    run(risk_scan, session, catalogue, TODAY + timedelta(days=3))
    assert len(warnings(session)) == 1
    run(risk_scan, session, catalogue, TODAY + timedelta(days=8))
    first, second = warnings(session)
    assert first.status == "handled" and second.status == "open" and second.level == "关注"
    assert "违纪频次 本学期 2次" in second.summary


def test_a_higher_level_reopens_at_once_despite_the_cooldown(svc, session, catalogue):
    say(svc, "sunli", "违纪频次 张三")
    [w] = warnings(session)
    say(svc, "liuwei", f"误报 #{w.id} 记错了人")
    assert "已记录" in say(svc, "sunli", "违纪频次 张三 2")
    first, second = warnings(session)
    assert first.status == "false_alarm" and second.level == "严重"


# ── manual flags and privacy ─────────────────────────────────────────────────

def test_a_teachers_mental_health_flag_reaches_counsellor_and_head_only(svc, session, catalogue):
    reply = say(svc, "chenjing", "预警 李四 心理 最近情绪低落，上课常走神")
    [w] = warnings(session)
    assert f"已提出预警 #{w.id}" in reply and "刘伟（辅导员）" in reply and "王芳（班主任）" in reply
    assert "只告知已处理" in reply
    assert (w.category, w.level, w.sensitive) == ("心理健康", "预警", True)
    assert recipients(session, w.id) == {"liuwei": ["opened"], "wangfang": ["opened"]}
    assert "陈静（任课教师）11-19 提出：最近情绪低落，上课常走神" in messages(session, w.id)[0].body
    # The teacher sees no list of it, may not act on it, and its card shows them nothing of it.
    assert "没有待处理的预警" in say(svc, "chenjing", "预警")
    assert "没有发给你" in say(svc, "chenjing", f"处理 #{w.id} 已谈")
    assert "预警记录" not in say(svc, "chenjing", "储值卡 李四")
    assert "预警记录" in say(svc, "wangfang", "储值卡 李四")
    assert "预警记录" not in say(svc, "lisi", "储值卡")
    # Three days later it is escalated to the department's 学工办 only: not 系部主任, not 院领导.
    assert run(warning_escalation, session, catalogue, TODAY + timedelta(days=3), time(12, 25)).startswith(
        "1 warnings escalated")
    assert recipients(session, w.id) == {"liuwei": ["opened"], "wangfang": ["opened"], "sunli": ["escalated"]}
    assert "已 3 天无人处理" in messages(session, w.id)[-1].body
    # Handled: the teacher hears that it was, not what was said.
    assert "已告知提出预警的老师" in say(svc, "liuwei", f"处理 #{w.id} 已谈心，转介心理中心")
    [told] = [m for m in messages(session, w.id) if m.recipient == "chenjing"]
    assert "已由刘伟老师处理" in told.body and "心理中心" not in told.body and "谈心" not in told.body


def test_a_non_sensitive_flag_author_hears_what_was_done(svc, session):
    say(svc, "chenjing", "预警 张三 学业 期中后三次作业未交")
    [w] = warnings(session)
    say(svc, "wangfang", f"处理 #{w.id} 已约谈，本周补交")
    [told] = [m for m in messages(session, w.id) if m.recipient == "chenjing"]
    assert "已由王芳老师处理：已约谈，本周补交" in told.body


def test_finance_flags_work_for_any_staff_within_scope_and_are_private(svc, session):
    reply = say(svc, "zhaoqiang", "预警 张三 理财 严重 网贷逾期，被催收")
    [w] = warnings(session)
    assert "已提出预警" in reply and (w.category, w.level, w.sensitive) == ("理财", "严重", True)
    assert set(recipients(session, w.id)) == {"wangfang", "liuwei"}
    assert "网贷" not in say(svc, "chenjing", "储值卡 张三")
    # Out of scope, not staff, wrong category, nothing to say.
    assert "不在你负责" in say(svc, "xuhong", "预警 2023010101 理财 消费异常")
    assert "找不到学生“张三”" in say(svc, "xuhong", "预警 张三 理财 消费异常")
    assert "仅限教职工" in say(svc, "zhangsan", "预警 李四 心理 难过")
    assert "不能对其提出预警" in say(svc, "zhengyuan", "预警 张三 理财 消费异常")  # 院领导: aggregates only
    assert "不认识预警类别“恋爱”" in say(svc, "wangfang", "预警 张三 恋爱 分手")
    assert "预警 <学生> <类别> <说明>" in say(svc, "wangfang", "预警 张三 心理")
    assert "请改用学号" in say(svc, "wangfang", "预警 刘洋 学业 旷课")


def test_a_flag_on_an_open_warning_adds_to_it_and_tells_its_recipients(svc, session):
    say(svc, "sunli", "违纪频次 张三")
    [w] = warnings(session)
    reply = say(svc, "chenjing", "预警 张三 违纪 严重 课堂上与同学打架")
    assert "已有未关闭的违纪预警" in reply and "现为“严重”" in reply
    [w] = warnings(session)
    assert w.level == "严重"
    assert recipients(session, w.id) == {"wangfang": ["opened", "raised:严重"], "liuwei": ["opened", "raised:严重"]}
    assert "课堂上与同学打架" in messages(session, w.id)[-1].body


def test_a_warning_that_becomes_sensitive_disappears_from_the_teachers_view(svc, session, catalogue):
    say(svc, "sunli", "违纪频次 张三")
    assert "预警记录" in say(svc, "chenjing", "储值卡 张三")
    say(svc, "sunli", "违纪受处罚级别 张三 记过")
    [w] = warnings(session)
    assert w.sensitive and w.level == "严重"
    assert "预警记录" not in say(svc, "chenjing", "储值卡 张三")
    assert "违纪受处罚级别 记过" in say(svc, "liuwei", f"预警 #{w.id}")


# ── closing the loop, escalation ─────────────────────────────────────────────

def test_my_warnings_handle_and_false_alarm(svc, session):
    say(svc, "sunli", "违纪频次 张三")
    say(svc, "chenjing", "预警 李四 学业 连续旷课两次")
    listed = say(svc, "wangfang", "预警")
    assert "你有 2 条待处理预警" in listed and "#1【违纪·关注】张三" in listed and "#2【学业·预警】李四" in listed
    assert "处理 #N 说明" in listed
    assert "请写明做了什么" in say(svc, "wangfang", "处理 #1")
    assert "找不到预警 #9" in say(svc, "wangfang", "处理 #9 好")
    assert "已记录处理并关闭预警 #1" in say(svc, "wangfang", "处理＃1 已约谈学生")
    assert "已于" in say(svc, "liuwei", "处理 #1 我也谈了") and "王芳处理" in say(svc, "liuwei", "误报 #1 x")
    assert "标记为误报" in say(svc, "liuwei", "误报 #2 已核实请过假")
    assert "没有待处理的预警" in say(svc, "wangfang", "预警")
    card = say(svc, "wangfang", "储值卡 张三")
    assert "#1 11月19日 违纪·关注 已处理（11月19日 王芳：已约谈学生）" in card
    events = session.scalars(select(RiskWarningEvent.kind).where(RiskWarningEvent.warning_id == 1)
                             .order_by(RiskWarningEvent.id)).all()
    assert events == ["opened", "handled"]


def test_left_for_three_days_it_goes_to_the_office_and_the_department_head(svc, session, catalogue):
    say(svc, "sunli", "违纪频次 王五")
    [w] = warnings(session)
    assert run(warning_escalation, session, catalogue, TODAY + timedelta(days=2)).startswith("0 warnings")
    assert run(warning_escalation, session, catalogue, TODAY + timedelta(days=3), time(12, 25)).startswith(
        "1 warnings escalated")
    assert run(warning_escalation, session, catalogue, TODAY + timedelta(days=3), time(13, 25)).startswith(
        "0 warnings")
    assert recipients(session, w.id) == {"wangfang": ["opened"], "liuwei": ["opened"], "sunli": ["escalated"],
                                         "wujun": ["escalated"]}
    listed = say(svc, "wujun", "预警")
    assert "王五" in listed and "已督办" in listed
    assert "已记录处理" in say(svc, "wujun", f"处理 #{w.id} 已督促班主任")


def test_the_weekly_cap_bundles_further_warnings_into_one_message(college, session, catalogue, db_url):
    capped = load_settings({"secret_key": "test", "risk_policy_overrides": {"WARNING_WEEKLY_CAP": "2"}})
    for name in ("张三", "李四", "王五"):
        put(session, catalogue, name, "B13", TODAY, 1, recorder="sunli")
    run(risk_scan, session, catalogue, TODAY, settings=capped)
    mine = [m for m in messages(session) if m.recipient == "wangfang"]
    assert [m.purpose for m in mine] == ["warning", "warning", "warning_bundle"]
    assert mine[2].period_key == "2025-W47" and "王五" in mine[2].body and "处理 #N 说明" in mine[2].body
    # Another this week joins the pending bundle; once that is sent, the next starts a second one.
    put(session, catalogue, "赵六", "B13", TODAY, 1, recorder="sunli")
    put(session, catalogue, "刘洋", "B13", TODAY, 1, recorder="sunli")
    run(risk_scan, session, catalogue, TODAY + timedelta(days=1), settings=capped)
    bundles = [m for m in messages(session) if m.recipient == "liuwei" and m.purpose == "warning_bundle"]
    assert len(bundles) == 1 and all(n in bundles[0].body for n in ("王五", "赵六", "刘洋"))
    bundles[0].status = "sent"
    session.commit()
    put(session, catalogue, "钱七", "B13", TODAY, 1, recorder="sunli")  # 徐红's class: under her cap
    put(session, catalogue, "张三", "A09", TODAY, 55)
    run(risk_scan, session, catalogue, TODAY + timedelta(days=2), settings=capped)
    keys = [m.period_key for m in messages(session) if m.recipient == "liuwei" and m.purpose == "warning_bundle"]
    assert keys == ["2025-W47", "2025-W47#2"]
    # A flag raised by a person is never bundled, and 严重 neither.
    say(make_service(db_url, TODAY + timedelta(days=2)), "chenjing", "预警 王五 理财 网贷")
    assert {m.purpose for m in messages(session)[-2:]} == {"warning"}
    # The next week starts afresh: single messages again.
    put(session, catalogue, "李四", "A09", TODAY + timedelta(days=7), 50)
    run(risk_scan, session, catalogue, TODAY + timedelta(days=7), settings=capped)
    last = messages(session)[-2:]
    assert {m.recipient for m in last} == {"wangfang", "liuwei"} and {m.purpose for m in last} == {"warning"}
    assert session.scalar(select(func.count()).select_from(RiskNotice).where(
        RiskNotice.week == "2025-W48", RiskNotice.bundled.is_(False))) == 2


# ── measures ─────────────────────────────────────────────────────────────────

def test_measures_time_to_first_action_share_within_72h_and_false_alarms_per_rule(svc, session, catalogue):
    say(svc, "sunli", "违纪频次 张三")
    say(svc, "sunli", "违纪频次 李四")
    say(svc, "chenjing", "预警 王五 学业 旷课")
    first, second, third = warnings(session)
    say(make_service(svc.settings.database_url, TODAY + timedelta(days=1)), "wangfang", f"处理 #{first.id} 已谈")
    say(make_service(svc.settings.database_url, TODAY + timedelta(days=5)), "liuwei", f"误报 #{second.id} 记错")
    since = datetime(2025, 11, 1, tzinfo=UTC)
    until = datetime(2025, 11, 30, tzinfo=UTC)
    m = measures.warning_measures(session, since, until)
    hours = {a.warning_id: a.hours for a in m.first_actions}
    assert hours == {first.id: 24.0, second.id: 120.0, third.id: None}
    assert (m.within_72h.hits, m.within_72h.total, m.within_72h.share) == (1, 3, pytest.approx(1 / 3))
    assert m.false_alarms == {"discipline_once": measures.Share(1, 2)}
    assert m.false_alarms["discipline_once"].share == 0.5
    # A warning still inside its 72 hours counts neither way.
    early = measures.handled_within(session, since, datetime(2025, 11, 20, 12, tzinfo=UTC))
    assert (early.hits, early.total) == (1, 1)


# ── delivery ─────────────────────────────────────────────────────────────────

def test_the_warning_reaches_the_wecom_api_bundled_per_person(college, db_url, redis_url, session):
    with FakeWeCom() as fake:
        settings = load_settings({
            "database_url": db_url, "redis_url": redis_url, "secret_key": "t",
            "wecom_corp_id": fake.corp_id, "wecom_secret": fake.secret, "wecom_agent_id": str(fake.agent_id),
            "wecom_token": "tok", "wecom_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            "wecom_api_base": fake.base_url,
        })
        if redis_url:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        now = datetime.combine(TODAY, time(10, 0), TZ)
        service = runtime.make_service(settings, clock=lambda: now)
        say(service, "sunli", "违纪频次 张三 3")
        report = make_deliverer(service).flush(now)
        assert report.sent == 2 and report.failed == 0
        [to_head] = fake.received["wangfang"]
        [to_counsellor] = fake.received["liuwei"]
        assert to_head == to_counsellor
        assert "【违纪·严重】预警 #1：张三（计算机2301，学号 2023010101）" in to_head
        assert "违纪频次 本学期 3次（最近 11-19）" in to_head and "处理 #1 说明" in to_head
        assert len(to_head.encode()) <= 2048
        assert set(fake.received) == {"wangfang", "liuwei"}
        assert make_deliverer(service).flush(now + timedelta(minutes=5)).calls == 0


# ── the demo college, as a new user would try it ─────────────────────────────

def test_on_the_demo_college(session, catalogue, db_url):
    load_demo(session, catalogue, TODAY, tz=TZ)
    session.commit()
    svc = make_service(db_url, TODAY)
    scan = run(risk_scan, session, catalogue, TODAY)
    assert "opened" in scan
    before = len(messages(session))
    assert "0 opened, 0 raised, 0 updated" in run(risk_scan, session, catalogue, TODAY)
    assert len(messages(session)) == before  # `jobs run` twice sends nothing new

    for _ in range(3):
        assert "已记录" in say(svc, "sunli", "违纪频次 张三")
    [w] = [w for w in warnings(session) if w.student.name == "张三"]
    assert (w.category, w.level) == ("违纪", "严重")
    # 关注 first (in the counsellor's weekly bundle: the scan filled his cap), then 严重, sent alone.
    assert all(events[-1] == "raised:严重" for events in recipients(session, w.id).values())
    assert reached(session, w.id) == {"wangfang", "liuwei"}

    say(svc, "chenjing", "预警 李四 心理 最近情绪低落")
    [flag] = [w for w in warnings(session) if w.student.name == "李四" and w.category == "心理健康"]
    assert reached(session, flag.id) == {"wangfang", "liuwei"}

    run(warning_escalation, session, catalogue, TODAY + timedelta(days=3), time(12, 25))
    assert reached(session, flag.id) == {"wangfang", "liuwei", "sunli"}
    assert reached(session, w.id) == {"wangfang", "liuwei", "sunli", "wujun"}
    say(svc, "liuwei", f"处理 #{flag.id} 已谈心")
    assert [m.recipient for m in messages(session, flag.id) if m.period_key.endswith("/handled")] == ["chenjing"]


def test_jobs_run_twice_from_the_command_line_queues_once(tmp_path):
    from bot.cli.db import upgrade_database

    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade_database(url)
    env = dict(os.environ, DATABASE_URL=url, SECRET_KEY="test")
    env.pop("REDIS_URL", None)

    def bot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)

    assert bot("demo").returncode == 0
    first = bot("jobs", "run", "risk_scan")
    assert first.returncode == 0 and "risk_scan: ok" in first.stdout, first.stderr
    engine = create_engine(url)
    with Session(engine) as s:
        queued = s.scalar(select(func.count()).select_from(OutboxMessage))
    again = bot("jobs", "run", "risk_scan")
    assert again.returncode == 0 and "0 opened, 0 raised" in again.stdout, again.stdout
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == queued
    assert "warning_escalation" in bot("jobs", "list").stdout
