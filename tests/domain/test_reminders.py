"""Reminders before each 采分时点: recorded through the real chat pipeline, checked in the outbox."""

from __future__ import annotations

import tomllib
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from core.config import load_settings
from core.schedules import JOB_SCHEDULES
from models.catalogue import parse_catalogue
from models.expected import Missing, missing_entries
from models.schema import Department, OutboxMessage, SchoolClass, Staff, Student
from models.scores import load_calendar
from scheduler import reminders
from scheduler.jobs import scheduled_jobs
from scheduler.registry import JOBS, JobContext
from tests.fakes.chat import make_service, say
from tests.fakes.factories import small_college

TZ = ZoneInfo("Asia/Shanghai")
SETTINGS = load_settings(environ={"SECRET_KEY": "test"})  # the defaults, whatever the environment says
FRIDAY = date(2025, 11, 21)  # week 2025-W47 (17–23 November)


def run(job, session, catalogue, day: date, at: time = time(15, 10)) -> str:
    """Run a job as the scheduler would at `day` `at`, then commit (the runner's part)."""
    ctx = JobContext(session=session, now=datetime.combine(day, at, TZ), catalogue=catalogue,
                     settings=SETTINGS)
    result = job(ctx)
    session.commit()
    return result


def outbox(session, purpose: str | None = None, period_key: str | None = None) -> list[OutboxMessage]:
    session.expire_all()
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if purpose:
        query = query.where(OutboxMessage.purpose == purpose)
    if period_key:
        query = query.where(OutboxMessage.period_key == period_key)
    return list(session.scalars(query))


def by_recipient(rows: list[OutboxMessage]) -> dict[str, OutboxMessage]:
    recipients = [r.recipient for r in rows]
    assert len(recipients) == len(set(recipients)), "one message per recorder per run"
    return {r.recipient: r for r in rows}


def lines(body: str) -> list[str]:
    return body.splitlines()


def record(db_url: str, day: date, userid: str, text: str) -> None:
    reply = say(make_service(db_url, day), userid, text)
    assert "已记录" in reply or "已撤销" in reply, reply


def staff_id(session, userid: str) -> int:
    return session.scalar(select(Staff.id).where(Staff.wecom_userid == userid))


@pytest.fixture
def calendar_college(session):
    return small_college(session, with_calendar=True)


# ── 周末 ─────────────────────────────────────────────────────────────────────

def test_friday_reminder_lists_exactly_what_is_missing_and_skips_complete_recorders(
        college, session, catalogue, db_url):
    record(db_url, date(2025, 11, 19), "wangfang", "全勤率 张三 100 李四 100")
    record(db_url, date(2025, 11, 20), "heping", "全勤率 软件2301 全班 100\n满勤率 软件2301 100")

    result = run(reminders.weekend_reminders, session, catalogue, FRIDAY)
    assert result == ("2025-W47: queued 3 reminders, 0 already queued, 1 recorders complete, "
                      "0 skipped without WeCom account")

    rows = by_recipient(outbox(session, "weekend_reminders"))
    assert set(rows) == {"wangfang", "xuhong", "sunli"}  # 何平's class is complete
    wang = rows["wangfang"]
    assert wang.period_key == "2025-W47" and wang.channel == "wecom" and wang.status == "pending"
    assert lines(wang.body) == [
        "王芳老师好！本周（11月17日–11月23日）以下周末采分点还没有录完，截止 11月23日（周日）：",
        "计算机2301 · 全勤率：3/5 人未录",
        "计算机2301 · 满勤率：班级未录",
        "录入示例：全勤率 计算机2301 全班 100",
    ]
    # 学工办 records 宿舍得分 for every class of the department, and only that.
    assert lines(rows["sunli"].body)[1:3] == [
        "计算机2301 · 宿舍得分：5/5 人未录", "软件技术2301 · 宿舍得分：1/1 人未录"]
    assert "会计" not in rows["sunli"].body

    missing = missing_entries(session, catalogue, load_calendar(session), "周末", FRIDAY)
    assert missing[staff_id(session, "wangfang")] == [
        Missing("计算机2301", "计算机2301", "全勤率", 3, 5, "A03", False),
        Missing("计算机2301", "计算机2301", "满勤率", 0, 5, "KA03", True),
    ]
    assert staff_id(session, "heping") not in missing


def test_a_second_run_for_the_same_week_sends_nothing_new(college, session, catalogue):
    first = run(reminders.weekend_reminders, session, catalogue, FRIDAY)
    assert "queued 4 reminders" in first
    second = run(reminders.weekend_reminders, session, catalogue, FRIDAY, time(17, 0))
    assert second.startswith("2025-W47: queued 0 reminders, 4 already queued")
    assert len(outbox(session)) == 4
    # The next week is a new period: a new message.
    run(reminders.weekend_reminders, session, catalogue, date(2025, 11, 28))
    assert len(outbox(session)) == 8


def test_undone_entries_count_as_missing(college, session, catalogue, db_url):
    record(db_url, FRIDAY, "wangfang", "全勤率 计算机2301 全班 100\n满勤率 计算机2301 100")
    cal = load_calendar(session)
    assert staff_id(session, "wangfang") not in missing_entries(session, catalogue, cal, "周末", FRIDAY)
    record(db_url, FRIDAY, "wangfang", "撤销")
    session.expire_all()
    items = missing_entries(session, catalogue, cal, "周末", FRIDAY)[staff_id(session, "wangfang")]
    assert [(m.point_short, m.missing_students, m.is_class) for m in items] == [
        ("全勤率", 5, False), ("满勤率", 0, True)]


def test_staff_without_wecom_account_are_skipped_and_counted(college, session, catalogue):
    session.get(Staff, staff_id(session, "wangfang")).wecom_userid = None
    session.commit()
    result = run(reminders.weekend_reminders, session, catalogue, FRIDAY)
    assert result.endswith("queued 3 reminders, 0 already queued, 0 recorders complete, "
                           "1 skipped without WeCom account")
    assert set(by_recipient(outbox(session))) == {"heping", "xuhong", "sunli"}


def test_no_weekend_reminder_in_a_vacation_week(calendar_college, session, catalogue):
    # The 校历 ends term 1 on 18 January and starts term 2 on 23 February.
    assert run(reminders.weekend_reminders, session, catalogue, date(2026, 2, 6)) == \
        "2026-W06: nothing due (vacation week)"
    assert outbox(session) == []
    # The week term 1 ends in still counts.
    assert "queued 4 reminders" in run(reminders.weekend_reminders, session, catalogue, date(2026, 1, 16))


# ── 每次课前 ─────────────────────────────────────────────────────────────────

def test_session_point_summary_goes_to_subject_teachers(college, session, catalogue, db_url):
    xu = session.get(Staff, staff_id(session, "xuhong"))
    xu.roles = "班主任,任课教师"  # the factory writes "班主任、任课教师", which role_set does not split
    session.commit()
    record(db_url, date(2025, 11, 12), "chenjing", "预习完成率 计算机2301 全班 100")  # last week
    record(db_url, date(2025, 11, 19), "chenjing", "准时率 计算机2301 全班 100")
    record(db_url, date(2025, 11, 20), "chenjing", "作业完成率 张三 100")
    record(db_url, date(2025, 11, 21), "chenjing", "作业完成率 张三 80 李四 90")

    result = run(reminders.session_point_summary, session, catalogue, FRIDAY, time(16, 40))
    assert result.startswith("2025-W47: queued 2 reminders")
    rows = by_recipient(outbox(session, "session_point_summary"))
    assert set(rows) == {"chenjing", "xuhong"}  # 体育老师 赵强 records no 每次课前 point
    assert lines(rows["chenjing"].body) == [
        "陈静老师好！本周（11月17日–11月23日）课前记录汇总，以下班级还有学生没有记录：",
        "计算机2301 · 预习完成率：5/5 人本周无记录",
        "计算机2301 · 作业完成率：3/5 人本周无记录",
        "每次课后发送一条即可，如：预习完成率 计算机2301 全班 100",
    ]
    assert rows["chenjing"].period_key == "2025-W47"
    assert "会计2301 · 准时率：1/1 人本周无记录" in rows["xuhong"].body


# ── 月末 ─────────────────────────────────────────────────────────────────────

def test_month_end_acts_three_days_before_the_end_of_the_month(college, session, catalogue, db_url):
    assert run(reminders.month_end_reminders, session, catalogue, date(2025, 11, 26), time(16, 10)) == \
        "2025-11: not due today (reminders on 2025-11-27)"
    assert outbox(session) == []

    record(db_url, date(2025, 11, 27), "heping", "满勤率 软件2301 全班 100")
    result = run(reminders.month_end_reminders, session, catalogue, date(2025, 11, 27), time(16, 10))
    assert result.startswith("2025-11: queued 2 reminders, 0 already queued, 1 recorders complete")
    rows = by_recipient(outbox(session, "month_end_reminders"))
    assert set(rows) == {"wangfang", "xuhong"}
    # Count points (课外学习频次, 与教师沟通频次) are events: never "missing".
    assert lines(rows["wangfang"].body) == [
        "王芳老师好！11月的以下月末采分点还没有录完，截止 11月30日（周日）：",
        "计算机2301 · 满勤率：5/5 人未录",
        "录入示例：满勤率 计算机2301 全班 100",
    ]
    assert rows["wangfang"].period_key == "2025-11"


# ── 学期末 ───────────────────────────────────────────────────────────────────

def test_semester_end_reminders_17_and_3_days_before_the_configured_end(
        calendar_college, session, catalogue, db_url):
    # Term 1 of the 校历 ends on 18 January 2026: reminders on 1 and 15 January.
    assert "not due today" in run(reminders.semester_end_reminders, session, catalogue, date(2025, 12, 31))
    assert outbox(session) == []
    record(db_url, date(2025, 12, 20), "zhaoqiang", "体能测试 计算机2301 全班 80")

    result = run(reminders.semester_end_reminders, session, catalogue, date(2026, 1, 1))
    assert result.startswith("2025-2026-1/D-17: queued ")
    rows = by_recipient(outbox(session, "semester_end_reminders"))
    # 赵强 records only 体能测试; 刘伟 (辅导员) only a count point and a derived one: nothing to ask.
    assert "liuwei" not in rows
    assert lines(rows["zhaoqiang"].body) == [
        "赵强老师好！2025-2026学年第一学期将于 1月18日（周日）结束（还有 17 天），以下学期末采分点还没有录完：",
        "软件技术2301 · 体能测试：1/1 人未录",
        "录入示例：体能测试 软件2301 全班 <分数>",
    ]
    assert rows["wangfang"].period_key == "2025-2026-1/D-17"
    assert "计算机2301 · 学期学分绩：5/5 人未录" in rows["wangfang"].body
    assert "计算机2301 · 自学能力：班级未录" in rows["wangfang"].body
    assert "职业资格证" not in rows["wangfang"].body  # 学年末: only in the second semester
    assert "计算机2301 · 违纪受处罚级别：5/5 人未录" in rows["sunli"].body
    assert "违纪频次" not in rows["sunli"].body

    before = len(outbox(session))
    run(reminders.semester_end_reminders, session, catalogue, date(2026, 1, 1), time(18, 0))
    # The days after the occasion only make it up for whoever was not reminded yet: nobody here.
    assert "queued 0 reminders" in run(reminders.semester_end_reminders, session, catalogue, date(2026, 1, 2))
    assert len(outbox(session)) == before
    assert run(reminders.semester_end_reminders, session, catalogue, date(2026, 1, 15)).startswith(
        "2025-2026-1/D-3: queued ")
    assert len(outbox(session)) == 2 * before


def test_semester_end_in_term_two_includes_year_end_points(calendar_college, session, catalogue, root):
    # Term 2 ends on 10 July 2026: 17 days before is 23 June.
    result = run(reminders.semester_end_reminders, session, catalogue, date(2026, 6, 23))
    assert result.startswith("2025-2026-2/D-17: queued ")
    body = by_recipient(outbox(session))["wangfang"].body
    # The shipped 学年末 point (职业资格证) counts certificates: an event, never "missing".
    assert "以下学期末采分点" in body and "职业资格证" not in body

    # A college whose 职业资格证 is a document to hand in is reminded of it at the end of the year.
    data = tomllib.loads((root / "models" / "catalogue.toml").read_text(encoding="utf-8"))
    for point in data["point"]:
        if point["code"] == "A10":
            point["kind"] = "document"
    edited = parse_catalogue(data)
    run(reminders.semester_end_reminders, session, edited, date(2026, 7, 7))
    body = by_recipient(outbox(session, period_key="2025-2026-2/D-3"))["wangfang"].body
    assert "以下学期末和学年末采分点" in body
    assert "计算机2301 · 职业资格证：5/5 人未录" in body
    assert body.index("学期学分绩") < body.index("职业资格证") < body.index("学生满意度")  # catalogue order


# ── 学年初, 第一学期中, 毕业前 ────────────────────────────────────────────────

def own_documents(root):
    """A college catalogue whose 个人发展规划 and 职业生涯规划 are its own points, not the plan documents
    that the plan_documents job names student by student."""
    data = tomllib.loads((root / "models" / "catalogue.toml").read_text(encoding="utf-8"))
    for point in data["point"]:
        if point["code"] in ("B01", "C01"):
            point["code"] += "X"
    return parse_catalogue(data)


def test_plan_documents_are_left_to_the_plan_documents_job(calendar_college, session, catalogue):
    assert "queued 0 reminders" in run(reminders.year_start_reminders, session, catalogue, date(2025, 9, 8))
    assert "queued 0 reminders" in run(reminders.first_semester_reminders, session, catalogue, date(2025, 11, 2))
    assert outbox(session) == []


def test_year_start_reminders_weekly_in_the_first_four_weeks(calendar_college, session, root, db_url):
    catalogue = own_documents(root)
    record(db_url, date(2025, 9, 3), "wangfang", "学业计划 计算机2301 全班")
    result = run(reminders.year_start_reminders, session, catalogue, date(2025, 9, 8), time(8, 10))
    assert result.startswith("2025-2026/2025-W37: queued 3 reminders")
    wang = by_recipient(outbox(session))["wangfang"]
    assert lines(wang.body) == [
        "王芳老师好！2025-2026学年的学年初采分点请在 9月28日（周日）前录完，以下还没有录：",
        "计算机2301 · 个人发展规划：5/5 人未录",
        "录入示例：个人发展规划 计算机2301 全班 已提交",
    ]
    assert "queued 3" in run(reminders.year_start_reminders, session, catalogue, date(2025, 9, 15), time(8, 10))
    assert "not due" in run(reminders.year_start_reminders, session, catalogue, date(2025, 10, 6), time(8, 10))
    assert "not due" in run(reminders.year_start_reminders, session, catalogue, date(2026, 3, 2), time(8, 10))
    assert len(outbox(session)) == 6


def test_first_semester_reminders_before_the_midpoint_of_term_one(calendar_college, session, root):
    catalogue = own_documents(root)
    # Term 1 runs 1 September – 18 January: its midpoint is 9 November; reminders on 2 and 9 November.
    assert "not due today" in run(reminders.first_semester_reminders, session, catalogue, date(2025, 11, 1))
    result = run(reminders.first_semester_reminders, session, catalogue, date(2025, 11, 2))
    assert result.startswith("2025-2026-1/D-7: queued 2 reminders")
    rows = by_recipient(outbox(session))
    assert set(rows) == {"sunli", "zhoujie"}  # 职业生涯规划: 教研室 and 学工办
    assert lines(rows["zhoujie"].body)[:3] == [
        "周杰老师好！2025-2026学年第一学期的第一学期中采分点截止 11月9日（周日）（学期过半），以下还没有录完：",
        "计算机2301 · 职业生涯规划：5/5 人未录",
        "软件技术2301 · 职业生涯规划：1/1 人未录",
    ]
    assert "D-0: queued 2" in run(reminders.first_semester_reminders, session, catalogue, date(2025, 11, 9))
    assert "not due" in run(reminders.first_semester_reminders, session, catalogue, date(2026, 3, 2))
    assert missing_entries(session, catalogue, load_calendar(session), "第一学期中", date(2026, 3, 2)) == {}


def test_graduation_reminders_only_for_final_year_classes(calendar_college, session, catalogue):
    calendar_college.se.grade = 2024  # graduates in 2027
    session.commit()
    assert "not due" in run(reminders.graduation_reminders, session, catalogue, date(2025, 12, 1))
    assert outbox(session) == []

    result = run(reminders.graduation_reminders, session, catalogue, date(2026, 3, 1), time(9, 40))
    assert result.startswith("2025-2026/2026-03: queued 2 reminders")
    rows = by_recipient(outbox(session))
    assert set(rows) == {"zhoujie", "sunli"}
    assert lines(rows["zhoujie"].body) == [
        "周杰老师好！毕业班的以下毕业前采分点还没有录完，本学期 7月10日（周五）结束前请录入：",
        "计算机2301 · 就业对口度：5/5 人未录",
        "计算机2301 · 毕业生创业比率：班级未录",
        "录入示例：就业对口度 计算机2301 全班 <不对口/基本对口/对口>",
    ]
    assert "软件" not in rows["sunli"].body
    # Monthly: the same month again is a no-op, the next month a new message.
    run(reminders.graduation_reminders, session, catalogue, date(2026, 3, 15))
    run(reminders.graduation_reminders, session, catalogue, date(2026, 4, 1))
    assert len(outbox(session)) == 4


# ── a day missed: made up inside the period, once, never early ───────────────

def queued(job, session, catalogue, day: date) -> tuple[str, list[OutboxMessage]]:
    """Run a job on `day`; its result and the messages it queued."""
    before = len(outbox(session))
    result = run(job, session, catalogue, day)
    return result, outbox(session)[before:]


def test_weekly_reminders_missed_on_friday_go_out_at_the_weekend_but_never_early(college, session, catalogue):
    for job in (reminders.weekend_reminders, reminders.session_point_summary):
        # Nothing ran on Friday 21 November; the scheduler's next run is on Saturday.
        result, rows = queued(job, session, catalogue, date(2025, 11, 22))
        assert result.startswith("2025-W47: queued ") and rows
        assert {r.period_key for r in rows} == {"2025-W47"}
        assert queued(job, session, catalogue, date(2025, 11, 23))[1] == []  # Sunday: nothing twice
        # A late run on Tuesday does not send the next week's on Tuesday, nor swallow its Friday.
        result, rows = queued(job, session, catalogue, date(2025, 11, 25))
        assert "not due yet" in result and rows == []
        assert {r.period_key for r in queued(job, session, catalogue, date(2025, 11, 28))[1]} == {"2025-W48"}


def test_month_end_reminder_missed_goes_out_on_a_later_day_of_the_month_once(college, session, catalogue):
    # Due on 27 November; the scheduler was down on the 27th and the 28th.
    result, rows = queued(reminders.month_end_reminders, session, catalogue, date(2025, 11, 29))
    assert result.startswith("2025-11: queued 3 reminders") and {r.period_key for r in rows} == {"2025-11"}
    assert set(by_recipient(rows)) == {"wangfang", "xuhong", "heping"}
    assert "截止 11月30日（周日）" in rows[0].body
    assert queued(reminders.month_end_reminders, session, catalogue, date(2025, 11, 30))[1] == []
    result, rows = queued(reminders.month_end_reminders, session, catalogue, date(2025, 12, 1))
    assert "not due today" in result and rows == []


def test_semester_end_occasions_missed_are_made_up_until_the_next_one(calendar_college, session, catalogue):
    job = reminders.semester_end_reminders
    # Term 1 ends 18 January: D-17 is 1 January (missed), D-3 is 15 January (missed too).
    result, rows = queued(job, session, catalogue, date(2026, 1, 5))
    assert result.startswith("2025-2026-1/D-17: queued ") and rows
    assert "（还有 13 天）" in rows[0].body  # the days actually left
    assert queued(job, session, catalogue, date(2026, 1, 6))[1] == []
    result, late = queued(job, session, catalogue, date(2026, 1, 16))
    assert result.startswith("2025-2026-1/D-3: queued ") and len(late) == len(rows)
    assert queued(job, session, catalogue, date(2026, 1, 18))[1] == []
    # Term 2 ends 10 July: a scheduler down from 23 June (D-17) to 7 July (D-3) sends D-3 once, not both.
    result, rows = queued(job, session, catalogue, date(2026, 7, 8))
    assert {r.period_key for r in rows} == {"2025-2026-2/D-3"}
    assert queued(job, session, catalogue, date(2026, 7, 9))[1] == []


def test_first_semester_reminder_a_week_before_the_midpoint_made_up_later(calendar_college, session, root):
    catalogue = own_documents(root)
    job = reminders.first_semester_reminders
    # The midpoint is 9 November; D-7 (2 November) missed.
    result, rows = queued(job, session, catalogue, date(2025, 11, 5))
    assert result.startswith("2025-2026-1/D-7: queued 2 reminders") and len(rows) == 2
    assert queued(job, session, catalogue, date(2025, 11, 6))[1] == []
    assert {r.period_key for r in queued(job, session, catalogue, date(2025, 11, 9))[1]} == {"2025-2026-1/D-0"}
    assert "not due" in queued(job, session, catalogue, date(2025, 11, 10))[0]


def test_year_start_and_graduation_reminders_missed_on_their_day_go_out_later_in_the_period(
        calendar_college, session, root):
    catalogue = own_documents(root)
    year_start = reminders.year_start_reminders
    # Monday 8 September missed: Wednesday sends that week's, Thursday nothing, the next Monday anew.
    result, rows = queued(year_start, session, catalogue, date(2025, 9, 10))
    assert result.startswith("2025-2026/2025-W37: queued 3 reminders") and len(rows) == 3
    assert queued(year_start, session, catalogue, date(2025, 9, 11))[1] == []
    assert len(queued(year_start, session, catalogue, date(2025, 9, 15))[1]) == 3

    calendar_college.se.grade = 2024
    session.commit()
    graduation = reminders.graduation_reminders
    # 1 March missed: the 3rd sends March's; the 15th nothing; 1 April April's.
    result, rows = queued(graduation, session, catalogue, date(2026, 3, 3))
    assert result.startswith("2025-2026/2026-03: queued 2 reminders")
    assert queued(graduation, session, catalogue, date(2026, 3, 15))[1] == []
    assert {r.period_key for r in queued(graduation, session, catalogue, date(2026, 4, 1))[1]} == \
        {"2025-2026/2026-04"}


# ── bundling within WeCom's limits ───────────────────────────────────────────

def test_a_recorder_with_very_many_classes_gets_one_message_within_2048_bytes(session, catalogue):
    dept = Department(name="大系")
    session.add(dept)
    session.flush()
    office = Staff(staff_no="T1", name="欧阳学工", roles="学工办", department_id=dept.id, wecom_userid="office")
    session.add(office)
    session.flush()
    classes = [SchoolClass(code=f"大类{i:03d}", name=f"大数据技术与应用{i:03d}班", department_id=dept.id, grade=2023)
               for i in range(120)]
    session.add_all(classes)
    session.flush()
    session.add_all([Student(student_no=f"S{i:05d}{k}", name=f"学生{i}{k}", class_id=c.id)
                     for i, c in enumerate(classes) for k in range(2)])
    session.commit()

    items = missing_entries(session, catalogue, load_calendar(session), "学期末", date(2026, 1, 14))[office.id]
    assert len(items) > 500
    result = run(reminders.semester_end_reminders, session, catalogue, date(2026, 1, 14))
    assert "queued 1 reminders" in result
    [row] = outbox(session)
    assert len(row.body.encode("utf-8")) <= 2048
    body = lines(row.body)
    shown = [line for line in body if " · " in line]
    assert body[1] == "大数据技术与应用000班 · 思想政治素质得分：2/2 人未录"
    assert body[-2] == f"…另有 {len(items) - len(shown)} 项"
    assert body[-1].startswith("录入示例：")
    assert len(shown) > 10


# ── configuration ────────────────────────────────────────────────────────────

def test_jobs_are_registered_with_their_default_schedules():
    assert JOBS["weekend_reminders"].cron == {"day_of_week": "fri", "hour": "15", "minute": "10"}
    assert JOBS["month_end_reminders"].cron == {"hour": "16", "minute": "10"}
    assert JOBS["session_point_summary"].cron == {"day_of_week": "fri", "hour": "16", "minute": "40"}
    assert JOBS["graduation_reminders"].cron == {"day": "1", "hour": "9", "minute": "40"}
    for name in ("semester_end_reminders", "year_start_reminders", "first_semester_reminders"):
        assert name in JOBS
    for job in JOBS.values():
        if JOB_SCHEDULES[job.name][0].startswith("REMINDER_"):
            assert job.cron["minute"] not in ("0", "30")  # WeCom: not on the hour or half hour


def test_schedules_and_offsets_come_from_the_environment():
    settings = load_settings(environ={
        "SECRET_KEY": "t",
        "REMINDER_WEEKEND_CRON": "sat 09:05", "REMINDER_GRADUATION_CRON": "day=5 month=3-7 10:20",
        "REMINDER_SEMESTER_END_DAYS": "3，17,10", "REMINDER_MONTH_END_DAYS": "2",
    })
    assert settings.schedules["weekend_reminders"] == {"day_of_week": "sat", "hour": "9", "minute": "5"}
    assert settings.schedules["graduation_reminders"] == {"day": "5", "month": "3-7", "hour": "10", "minute": "20"}
    assert settings.schedules["month_end_reminders"] == {"hour": "16", "minute": "10"}
    assert settings.reminders.semester_end_days == (17, 10, 3)
    assert settings.reminders.month_end_days == 2
    # The scheduler and `jobs list` take each job's schedule from the settings.
    assert scheduled_jobs(settings)["weekend_reminders"].schedule == "day_of_week=sat hour=9 minute=5"
    assert JOBS["weekend_reminders"].cron == {"day_of_week": "fri", "hour": "15", "minute": "10"}  # the default
    for bad in ({"REMINDER_WEEKEND_CRON": "fri 25:10"}, {"REMINDER_WEEKEND_CRON": "someday 15:10"},
                {"REMINDER_WEEKEND_CRON": "fri"}, {"REMINDER_SEMESTER_END_DAYS": "soon"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            load_settings(environ={"SECRET_KEY": "t", **bad})
