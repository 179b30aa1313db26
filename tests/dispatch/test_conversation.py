"""A message through the real pipeline and registry against a real database: replies and rows."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from models.schema import AuditLog, ProcessedMessage, RecordingBatch, Student
from models.scores import revoke
from tests.fakes.chat import live_entries, make_service, say, student_id


@pytest.fixture
def svc(college, db_url, today, redis_url):
    return make_service(db_url, today, redis_url)


def values_by_student(session, point_code):
    return {session.get(Student, e.student_id).name: e.value for e in live_entries(session, point_code)}


# ── recording ────────────────────────────────────────────────────────────────

def test_two_students_in_one_message_then_student_sees_it_and_undo_takes_it_back(svc, session):
    reply = say(svc, "wangfang", "全勤率 张三 95 李四 90")
    assert "已记录 2 条" in reply and "张三 95%" in reply and "李四 90%" in reply
    assert values_by_student(session, "A03") == {"张三": 95.0, "李四": 90.0}

    card = say(svc, "zhangsan", "储值卡")
    assert "【学业发展】小计 95.0" in card
    assert "全勤率 95%" in card
    assert "总分 95.0" in card

    undone = say(svc, "wangfang", "撤销")
    assert "已撤销 2 条" in undone
    assert live_entries(session) == []
    assert "全勤率" not in say(svc, "zhangsan", "储值卡")


def test_several_lines_count_without_value_and_class_point(svc, session):
    reply = say(svc, "wangfang", "课外学习频次 张三 李四\n与教师沟通 王五 2\n满勤率 计算机2301 96")
    first, *lines, last = reply.splitlines()  # one line a point, each on its own line
    assert first.startswith("已记录 4 条（#") and last.startswith("计入：")
    assert lines == ["课外学习频次 张三 1次、李四 1次", "与教师沟通频次 王五 2次", "满勤率 计算机2301 96%"]
    assert values_by_student(session, "A07") == {"张三": 1.0, "李四": 1.0}
    assert values_by_student(session, "A08") == {"王五": 2.0}
    [klass] = live_entries(session, "KA03")
    assert klass.class_id is not None and klass.value == 96.0


def test_continuation_line_uses_the_point_above(svc, session):
    reply = say(svc, "wangfang", "全勤率 张三 95\n李四 90")
    assert "已记录 2 条" in reply
    assert values_by_student(session, "A03") == {"张三": 95.0, "李四": 90.0}


def test_whole_class_with_exceptions(svc, session):
    reply = say(svc, "wangfang", "全勤率 计算机2301 全班 100 张三 80 2023010104 90")
    assert "全班 5 人 100%" in reply and "张三 80%" in reply
    values = {e.student_id: e.value for e in live_entries(session, "A03")}
    assert len(values) == 5
    assert values[student_id(session, "张三")] == 80.0
    assert values[student_id(session, "李四")] == 100.0
    four = session.scalar(select(Student.id).where(Student.student_no == "2023010104"))
    assert values[four] == 90.0


def test_a_bad_line_records_nothing_and_each_bad_line_is_named(svc, session):
    reply = say(svc, "wangfang", "全勤率 张三 95\n全勤率 李四 120\n全勤率 不存在 90\n满勤 张三")
    assert "没有记录任何内容" in reply
    assert "第2行" in reply and "0%–100%" in reply
    assert "第3行" in reply and "找不到学生“不存在”" in reply
    assert "第4行" in reply and "缺少满勤率的值" in reply
    assert "第1行" not in reply
    assert live_entries(session) == []
    assert session.scalar(select(func.count()).select_from(AuditLog)) == 0


@pytest.mark.parametrize("text", [
    "作业 张三 ９５",  # alias, full-width digits
    "作业完成率，张三，95%",  # full-width punctuation as separators, percent
    "作业完成率张三95",  # no spaces at all
    "作业完成率  张三   95 ",
])
def test_aliases_full_width_and_percent(svc, session, text):
    reply = say(svc, "chenjing", text)
    assert "已记录 1 条" in reply, reply
    assert values_by_student(session, "A06") == {"张三": 95.0}


def test_shared_name_asks_for_the_student_number(svc, session):
    reply = say(svc, "wangfang", "全勤率 刘洋 95")
    assert "2023010104" in reply and "2023010105" in reply and "学号" in reply
    assert live_entries(session) == []
    assert "已记录 1 条" in say(svc, "wangfang", "全勤率 2023010105 95")


@pytest.mark.parametrize("text, expected", [
    ("全勤率 张三 abc", "“abc”不是数值"),
    ("全勤率 张三 95 不存在 90", "找不到学生“不存在”"),
    ("学期学分绩 张三 95%", "不用百分号"),
    ("学期学分绩 张三 101", "0–100"),
    ("课外学习频次 张三 2.5", "整数"),
    ("课外学习频次 张三 500", "整数"),
    ("学业计划 张三 也许", "已提交"),
    ("全勤率 张三", "缺少全勤率的值"),
    ("全勤率 95", "值“95”前缺少学生"),
    ("全勤率", "缺少学生或班级"),
    ("全勤率 张三 95 张三 90", "两次"),
])
def test_values_are_checked_against_kind_and_range(svc, session, text, expected):
    reply = say(svc, "wangfang", text)
    assert "没有记录任何内容" in reply and expected in reply, reply
    assert live_entries(session) == []


def test_level_point_by_its_label(svc, session):
    reply = say(svc, "sunli", "违纪受处罚级别 张三 记过")
    assert "已记录 1 条" in reply and "记过" in reply
    assert values_by_student(session, "B14") == {"张三": 3.0}
    assert "警告、严重警告、记过" in say(svc, "sunli", "处罚级别 李四 很严重")


def test_derived_class_point_is_never_typed(svc, session):
    reply = say(svc, "wangfang", "全勤率 计算机2301 95")
    assert "自动计算" in reply and "全勤率 计算机2301 全班" in reply
    assert live_entries(session) == []


def test_recording_outside_ones_role_or_scope(svc, session):
    assert "采分主体：任课教师" in say(svc, "wangfang", "作业 张三 90")
    assert "不在你可录入" in say(svc, "wangfang", "全勤率 赵六 90")  # another class
    assert "采分点由老师录入" in say(svc, "zhangsan", "全勤率 张三 100")
    assert "采分主体：体育老师" in say(svc, "chenjing", "体能测试 张三 80")
    assert "已记录" in say(svc, "zhaoqiang", "体测 张三 80")
    assert live_entries(session, "A06") == []


# ── rules of recording ───────────────────────────────────────────────────────

def test_same_point_and_period_replaces_and_the_audit_keeps_the_old_value(svc, session):
    say(svc, "wangfang", "全勤率 张三 80")
    say(svc, "wangfang", "全勤率 张三 95")
    card = say(svc, "zhangsan", "储值卡")
    assert "全勤率 95%" in card and "80" not in card.split("最近记录")[0]
    audits = session.scalars(select(AuditLog).where(AuditLog.action == "record").order_by(AuditLog.id)).all()
    assert json.loads(audits[1].old_value)["value"] == 80.0
    assert json.loads(audits[1].new_value)["value"] == 95.0
    # Undoing the replacement brings the earlier value back.
    say(svc, "wangfang", "撤销")
    assert "全勤率 80%" in say(svc, "zhangsan", "储值卡")


def test_count_points_add_up(svc, session):
    say(svc, "sunli", "违纪 张三")
    say(svc, "sunli", "违纪 张三 2")
    assert "违纪频次 3次" in say(svc, "wangfang", "储值卡 张三")


def test_observations_each_class_session_and_the_card_shows_their_mean(svc, session):
    for value in (100, 80, 90):
        assert "已记录" in say(svc, "chenjing", f"准时率 张三 {value}")
    assert len(live_entries(session, "A02")) == 3
    assert "准时率 90%（3次课均值）" in say(svc, "zhangsan", "储值卡")


def test_weekly_values_average_over_the_semester_and_value_added_against_last_week(college, db_url, session, redis_url):
    last_week = make_service(db_url, date(2025, 11, 12), redis_url)
    this_week = make_service(db_url, date(2025, 11, 19), redis_url)
    say(last_week, "wangfang", "全勤率 张三 80")
    say(this_week, "wangfang", "全勤率 张三 100")
    card = say(this_week, "zhangsan", "储值卡")
    # (80 + 100) / 2 = 90 over two weeks; total 90 now against 80 at the end of last week.
    assert "全勤率 90%（2周均值）" in card
    assert "小计 90.0（较上周 +10.0）" in card
    assert "增值 +10.0" in card


def test_last_week_within_grace_window_and_not_after(college, db_url, session, redis_url):
    monday = make_service(db_url, date(2025, 11, 17), redis_url)
    reply = say(monday, "wangfang", "上周 全勤率 张三 90")
    assert "已记录" in reply and "2025年第46周" in reply
    [entry] = live_entries(session, "A03")
    assert entry.period_key == "2025-W46"
    thursday = make_service(db_url, date(2025, 11, 20), redis_url)
    late = say(thursday, "wangfang", "上周 全勤率 张三 90")
    assert "补录期已过" in late and "11月19日" in late
    assert "不能用“上月”" in say(thursday, "wangfang", "上月 全勤率 张三 90")


def test_default_calendar_puts_february_in_the_second_semester(college, db_url, session, redis_url):
    svc = make_service(db_url, date(2026, 2, 3), redis_url)
    say(svc, "wangfang", "学期学分绩 张三 88")
    [entry] = live_entries(session, "A09")
    assert entry.semester_key == "2025-2026-2"
    assert "2025-2026学年第二学期" in say(svc, "zhangsan", "储值卡")


def test_graduation_point_only_in_the_final_year(college, db_url, session, redis_url):
    second_year = make_service(db_url, date(2024, 11, 19), redis_url)
    assert "毕业学年" in say(second_year, "zhoujie", "就业对口度 张三 对口")
    final_year = make_service(db_url, date(2025, 11, 19), redis_url)
    assert "已记录" in say(final_year, "zhoujie", "就业对口度 张三 对口")


# ── undo ─────────────────────────────────────────────────────────────────────

def test_undo_one_entry_by_number_and_only_ones_own(svc, session):
    reply = say(svc, "wangfang", "全勤率 张三 95 李四 90")
    first = live_entries(session)[0].id
    assert "无法" not in say(svc, "liuwei", f"撤销 #{first}")
    assert "找不到你录入的" in say(svc, "liuwei", f"撤销 #{first}")
    assert "已撤销 1 条" in say(svc, "wangfang", f"撤销 #{first}")
    assert "已经撤销过" in say(svc, "wangfang", f"撤销 #{first}")
    assert values_by_student(session, "A03") == {"李四": 90.0}
    assert "#" in reply
    revokes = session.scalars(select(AuditLog).where(AuditLog.action == "revoke")).all()
    assert len(revokes) == 1 and json.loads(revokes[0].old_value)["value"] == 95.0


def test_an_undo_that_lost_the_race_undoes_nothing_twice(svc, session):
    """Two 撤销 of the same recording (two devices, two workers): the second finds the entries
    already undone under the recording locks, and writes no second audit row."""
    say(svc, "wangfang", "全勤率 张三 95 李四 90")
    entries = live_entries(session)
    first = revoke(session, "王芳(wangfang)", entries[0].recorder_id, entries, None)
    session.commit()
    assert len(first) == 2 and session.get(RecordingBatch, entries[0].batch_id).revoked_at is not None
    again = revoke(session, "王芳(wangfang)", entries[0].recorder_id, entries, None)
    session.commit()
    assert again == []
    assert session.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "revoke")) == 2
    assert "还没有可以撤销" in say(svc, "wangfang", "撤销")


def test_undo_with_nothing_to_undo(svc):
    assert "还没有可以撤销" in say(svc, "wangfang", "撤销")


# ── cards and visibility ─────────────────────────────────────────────────────

def test_sensitive_points_hidden_from_subject_teacher_but_shown_to_adviser(svc, session):
    assert "已记录" in say(svc, "liuwei", "心理辅导 张三")
    assert "已记录" in say(svc, "chenjing", "作业 张三 90")
    assert "心理辅导频次" in say(svc, "liuwei", "储值卡 张三")
    assert "心理辅导频次" in say(svc, "wangfang", "储值卡 张三")
    assert "心理辅导频次" in say(svc, "zhangsan", "储值卡")
    teacher = say(svc, "chenjing", "储值卡 张三")
    assert "作业完成率" in teacher and "心理辅导" not in teacher
    head = say(svc, "wujun", "储值卡 张三")
    assert "作业完成率" in head and "心理辅导" not in head


def test_card_scope_for_staff_and_students(svc):
    assert "只能查看自己" in say(svc, "zhangsan", "储值卡 李四")
    assert "找不到学生" in say(svc, "wangfang", "储值卡 赵六")  # not in 王芳's classes
    assert "班级卡" in say(svc, "zhengyuan", "储值卡 张三")  # 院领导: aggregates only
    assert "学号" in say(svc, "wangfang", "储值卡 刘洋")
    assert "张三（计算机2301）储值卡" in say(svc, "wangfang", "储值卡 2023010101")


def test_research_office_sees_only_the_career_domain(svc):
    say(svc, "wangfang", "全勤率 张三 95")
    say(svc, "zhoujie", "职业适应能力 张三 85")
    card = say(svc, "zhoujie", "储值卡 张三")
    assert "【职业发展】小计 85.0" in card
    assert "学业发展" not in card and "总分" not in card


def test_class_card_shows_derived_points(svc, session):
    say(svc, "wangfang", "全勤率 计算机2301 全班 100 张三 80")
    say(svc, "sunli", "违纪 张三")
    card = say(svc, "wangfang", "班级卡 计算机2301")
    assert "全勤率 96%（5人均值）" in card  # (80 + 4 × 100) / 5
    assert "违纪学生比率 20%" in card  # 1 of 5 students
    assert "不在你负责的范围" in say(svc, "wangfang", "班级卡 会计2301")
    assert "计算机2301" in say(svc, "zhengyuan", "班级卡 计算机2301")
    assert "找不到班级" in say(svc, "wangfang", "班级卡 不存在2301")


# ── help and unknown input ───────────────────────────────────────────────────

def test_help_is_for_the_senders_own_roles(svc):
    teacher = say(svc, "wangfang", "帮助")
    assert "全勤率" in teacher and "撤销" in teacher and "作业完成率" not in teacher
    subject = say(svc, "chenjing", "帮助")
    assert "作业完成率" in subject and "全勤率、" not in subject
    student = say(svc, "zhangsan", "帮助")
    assert "储值卡" in student and "撤销" not in student and "录入采分点" not in student


def test_unknown_sender_is_told_how_to_bind_and_sees_no_data(svc):
    reply = say(svc, "stranger", "储值卡 张三")
    assert "还没有和学校名册绑定" in reply and "张三" not in reply


def test_unknown_command_gets_a_hint(svc):
    assert "发送“帮助”" in say(svc, "wangfang", "你好")


def test_sender_found_by_staff_number_too(svc):
    assert "王芳老师" in say(svc, "T001", "帮助")


def test_a_processed_message_is_answered_again_not_redone(svc, session):
    first = say(svc, "wangfang", "全勤率 张三 95", msg_key="dup-1")
    again = say(svc, "wangfang", "全勤率 张三 95", msg_key="dup-1")
    assert first == again
    assert len(live_entries(session)) == 1
    assert session.scalar(select(func.count()).select_from(ProcessedMessage)) == 1


def test_next_week_records_into_a_new_period(college, db_url, session, redis_url, today):
    say(make_service(db_url, today, redis_url), "wangfang", "全勤率 张三 90")
    say(make_service(db_url, today + timedelta(days=7), redis_url), "wangfang", "全勤率 张三 70")
    assert sorted(e.period_key for e in live_entries(session, "A03")) == ["2025-W47", "2025-W48"]


def test_a_dropped_database_connection_costs_no_message(svc, session, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("terminating server connections needs PostgreSQL")
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    from sqlalchemy import text

    session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    session.commit()
    assert "已记录" in say(svc, "wangfang", "全勤率 李四 90")
    assert values_by_student(session, "A03") == {"张三": 95.0, "李四": 90.0}


def test_every_command_has_its_own_help_line(svc):
    """Each command's 帮助 line is a template (templates/chat/help/), rendered with the settings."""
    from core.render import render
    from handlers.registry import registry

    lines = [render(c.summary, settings=svc.settings) for c in registry.commands if c.summary]
    assert len(lines) == len(set(lines)) and all(lines)
    assert f"导出 <班级>：班级储值卡工作簿的下载链接（{svc.settings.export_link_hours} 小时内有效）" in lines
