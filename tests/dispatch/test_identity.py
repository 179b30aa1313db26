"""Who a message is from (PRODUCT.md §5, under the roster workbook): on WeChat a FromUserName is a
企业微信账号, and a 工号 or 学号 stands in only for a person without one, never when someone else
could be meant; the console takes a 工号 or 学号 for anyone and its audit rows name who ran it."""

from __future__ import annotations

import getpass
import itertools

import pytest
from sqlalchemy import select

from bot.pipeline import handle_message
from core.messages import IncomingMessage
from models.schema import AuditLog, ScoreEntry, Staff, Student
from tests.edges.test_wecom import count, text_xml
from tests.edges.test_wecom import serve as serve  # noqa: F401  (the live HTTP edge fixture)
from tests.fakes.chat import live_entries, make_service, say
from tests.fakes.factories import small_college

AMBIGUOUS = "对应不止一人"
UNKNOWN = "还没有和学校名册绑定"
_keys = itertools.count(1)


@pytest.fixture
def college(session):
    """The small college, with a roster a new user would plausibly import:
    - 孙悟, a new student, whose 企业微信账号 is "T001", 王芳's 工号 (王芳 has her own account);
    - 陈静 (T002) and the student 刘洋 (2023010104) have no 企业微信账号;
    - 周杰 (T005) has none either, but "t005" is the student 王五's account;
    - 徐红 (T008) has none, and her 工号 is also 赵六's 学号."""
    built = small_college(session)
    session.add(Student(student_no="2023010106", name="孙悟", class_id=built.cs.id, wecom_userid="T001"))
    staff = {s.staff_no: s for s in session.scalars(select(Staff))}
    students = {s.name: s for s in session.scalars(select(Student))}
    staff["T002"].wecom_userid = None
    staff["T005"].wecom_userid = None
    students["王五"].wecom_userid = "t005"
    staff["T008"].wecom_userid = None
    students["赵六"].student_no = "T008"
    session.commit()
    return built


@pytest.fixture
def svc(college, db_url, today, redis_url):
    return make_service(db_url, today, redis_url)


def wecom(svc, userid: str, text: str) -> str:
    """A message as the WeCom callback hands it to the pipeline."""
    return handle_message(svc, IncomingMessage("wecom", userid, text, msg_key=f"id{next(_keys)}")).text


def test_on_wecom_an_account_beats_a_teachers_number(svc, session):
    assert wecom(svc, "T001", "储值卡").startswith("孙悟（计算机2301）储值卡")
    assert "你只能查看自己的储值卡" in wecom(svc, "T001", "储值卡 张三")
    assert "采分点由老师录入" in wecom(svc, "T001", "全勤率 张三 95")
    assert live_entries(session) == []
    # the console reads an account first too
    assert say(svc, "T001", "储值卡").startswith("孙悟（计算机2301）储值卡")


def test_on_wecom_a_number_stands_in_only_for_a_person_without_an_account(svc, session):
    # 陈静 and 刘洋 have no account: their 工号 / 学号 is who they are
    assert "陈静老师" in wecom(svc, "T002", "帮助")
    assert "已记录 1 条" in wecom(svc, "T002", "作业完成率 张三 90")
    assert wecom(svc, "2023010104", "储值卡").startswith("刘洋（计算机2301）储值卡")
    # 刘伟 has an account: his 工号 is not him on WeCom, but is at the console
    assert UNKNOWN in wecom(svc, "T003", "帮助")
    assert "刘伟老师" in say(svc, "T003", "帮助")
    # a 学号 of a student who has an account
    assert UNKNOWN in wecom(svc, "2023010101", "储值卡")
    assert "张三" in say(svc, "2023010101", "储值卡")


def test_a_number_that_could_be_someone_else_matches_nobody_on_wecom(svc, session):
    # "T005" is 周杰's 工号, and "t005" (WeCom ignores case) is 王五's account
    reply = wecom(svc, "T005", "储值卡 张三")
    assert AMBIGUOUS in reply and "修正名册" in reply and "张三" not in reply and "王五" not in reply
    assert "周杰老师" in say(svc, "T005", "帮助")  # the console still takes a 工号
    # "T008" names 徐红 (工号) and 赵六 (学号): nobody, on any channel
    assert AMBIGUOUS in wecom(svc, "T008", "储值卡")
    assert AMBIGUOUS in say(svc, "T008", "储值卡")
    # 王五 himself is known by his account exactly
    assert "王五" in wecom(svc, "t005", "储值卡")
    assert UNKNOWN in wecom(svc, "nobody", "储值卡")


def test_console_audit_rows_name_the_operating_system_user(svc, session):
    assert "已记录 1 条" in say(svc, "T007", "全勤率 赵六 95")  # 何平 by 工号, at the console
    assert "已记录 1 条" in wecom(svc, "wangfang", "全勤率 张三 95")
    assert "已撤销 1 条" in say(svc, "wangfang", "撤销")
    session.expire_all()
    actors = [a.actor for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    who = getpass.getuser()
    assert actors == [f"何平(T007，控制台：{who})", "王芳(wangfang)", f"王芳(wangfang，控制台：{who})"]


# ── the Done-when case, through the encrypted WeCom callback ─────────────────

def test_over_wecom_a_student_whose_account_is_a_teachers_number_is_only_themselves(serve, college,  # noqa: F811
                                                                                    session):
    wecom_edge = serve()
    recorded = wecom_edge.reply_text(wecom_edge.post(text_xml("wangfang", "全勤率 孙悟 88 张三 95")))
    assert "已记录 2 条" in recorded
    card = wecom_edge.reply_text(wecom_edge.post(text_xml("T001", "储值卡")))
    assert card.startswith("孙悟（计算机2301）储值卡") and "全勤率 88%" in card and "总分 88.0" in card
    assert "张三" not in card and "95%" not in card
    assert "只能查看自己的储值卡" in wecom_edge.reply_text(wecom_edge.post(text_xml("T001", "储值卡 张三")))
    refused = wecom_edge.reply_text(wecom_edge.post(text_xml("T001", "全勤率 张三 60 李四 90")))
    assert "采分点由老师录入" in refused
    assert count(session, ScoreEntry) == 2
    other = wecom_edge.reply_text(wecom_edge.post(text_xml("T001", "班级卡 计算机2301")))
    assert "“班级卡”仅限教职工使用" in other
    ambiguous = wecom_edge.reply_text(wecom_edge.post(text_xml("T005", "储值卡")))
    assert AMBIGUOUS in ambiguous


# ── as the commands run: roster import warns, the console's audit names who ran it ───────────

def test_roster_import_warns_and_console_audit_names_the_os_user(tmp_path):
    from sqlalchemy import create_engine

    from tests.domain.test_roster import full_rows, make_xlsx
    from tests.edges.test_cli import run_bot

    url = f"sqlite:///{tmp_path / 'i.db'}"
    assert run_bot(["db", "upgrade"], url).returncode == 0
    rows = full_rows()
    rows["学生"].append([2023010103, "孙悟", "CS2301", "T004"])  # 钱老师's 工号
    imported = run_bot(["roster", "import", str(make_xlsx(tmp_path / "roster.xlsx", rows))], url)
    assert imported.returncode == 0, imported.stderr
    assert "学生：新增 4" in imported.stdout
    assert "提醒：钱老师（工号T004，教职工 第5行）的工号“T004”是孙悟（学号2023010103，学生 第5行）的企业微信账号" \
        in imported.stdout

    chat = run_bot(["chat", "--as", "T002"], url, stdin="全勤率 张三 95\n")  # 李老师 by 工号
    assert chat.returncode == 0 and "已记录 1 条" in chat.stdout, chat.stdout + chat.stderr
    with create_engine(url).connect() as conn:
        actors = conn.exec_driver_sql("SELECT actor FROM audit_log").scalars().all()
    assert actors == [f"李老师(T002，控制台：{getpass.getuser()})"]
