"""Binding Official Account followers through the real pipeline (channel "mp"): codes from a class's
班主任, 绑定 as the student or a parent, what each then sees, 解绑 (PRODUCT.md §4.1)."""

from __future__ import annotations

import itertools
import re

import pytest
from sqlalchemy import select

from bot.pipeline import handle_message
from core.messages import IncomingMessage
from core.render import render
from models.schema import AuditLog, BindCode, FollowerBinding, OutboxMessage, ProcessedMessage, Student
from tests.fakes.chat import make_service, say

_keys = itertools.count(1)
CODE = re.compile(r"验证码：(\d{8})")
UNBOUND = render("chat/mp_unbound.txt")
REJECTED = render("chat/bind_rejected.txt", until=None)


@pytest.fixture
def svc(college, db_url, today, redis_url):
    return make_service(db_url, today, redis_url)


def mp(service, openid: str, text: str, msg_key: str | None = None) -> str:
    """A text from an Official Account follower, as the /wechat/mp callback hands it on."""
    key = msg_key or f"mp{next(_keys)}"
    return handle_message(service, IncomingMessage("mp", openid, text, msg_key=key)).text


def code_for(service, staff: str, command: str) -> str:
    reply = say(service, staff, command)
    found = CODE.search(reply)
    assert found, reply
    return found.group(1)


def binding(session, openid: str) -> FollowerBinding | None:
    session.expire_all()
    return session.scalar(select(FollowerBinding).where(FollowerBinding.openid == openid))


def test_a_student_binds_with_the_head_teachers_code_and_sees_their_card(svc, session):
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    reply = say(svc, "wangfang", "绑定码 张三")
    assert "张三（计算机2301，学号 2023010101）" in reply and "有效期至 2025-11-26 12:00" in reply
    code = CODE.search(reply).group(1)

    done = mp(svc, "oZhang", f"绑定 2023010101 {code}")
    assert "张三" in done and "身份：本人" in done
    card = mp(svc, "oZhang", "储值卡")
    assert "张三（计算机2301）储值卡" in card and "全勤率 95%" in card
    row = binding(session, "oZhang")
    assert row.kind == "student" and row.student_id == session.scalar(
        select(Student.id).where(Student.name == "张三"))

    # The same code again, from anyone: refused, without naming anybody.
    again = mp(svc, "oSomeoneElse", f"绑定 2023010101 {code}")
    assert again == REJECTED and "张三" not in again
    assert binding(session, "oSomeoneElse") is None


def test_a_wrong_student_number_and_a_wrong_code_get_the_same_reply(svc):
    code = code_for(svc, "wangfang", "绑定码 张三")
    wrong = "87654321" if code != "87654321" else "12345678"
    no_such_student = mp(svc, "oGuess", f"绑定 2099999999 {code}")
    wrong_code = mp(svc, "oGuess2", f"绑定 2023010101 {wrong}")
    other_students_number = mp(svc, "oGuess3", f"绑定 2023010102 {code}")
    assert no_such_student == wrong_code == other_students_number == REJECTED
    assert "绑定成功" in mp(svc, "oZhang", f"绑定 2023010101 {code}")  # the wrong tries did not use it up


def test_a_parent_sees_the_card_without_sensitive_points_and_manages_their_weekly_card(svc, session):
    assert "已记录" in say(svc, "liuwei", "心理辅导 张三")
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 90")
    code = code_for(svc, "wangfang", "家长绑定码 张三")
    done = mp(svc, "oMum", f"绑定 2023010101 {code}")
    assert "张三" in done and "身份：家长" in done

    card = mp(svc, "oMum", "储值卡")
    assert "张三（计算机2301）储值卡" in card and "全勤率 90%" in card
    assert "心理辅导" not in card
    assert "心理辅导" not in mp(svc, "oMum", "储值卡 张三")  # no other card, no other view
    student_code = code_for(svc, "wangfang", "绑定码 张三")
    mp(svc, "oZhang", f"绑定 2023010101 {student_code}")
    assert "心理辅导频次" in mp(svc, "oZhang", "储值卡")  # the student's own card keeps it

    assert "已退订" in mp(svc, "oMum", "退订周报")
    assert binding(session, "oMum").weekly_card is False
    assert session.get(Student, binding(session, "oMum").student_id).weekly_card is True  # the child's own flag
    assert "已订阅" in mp(svc, "oMum", "订阅周报")
    assert binding(session, "oMum").weekly_card is True
    flips = session.scalars(select(AuditLog).where(AuditLog.entity == "follower_binding",
                                                   AuditLog.action.in_(("subscribe", "unsubscribe")))).all()
    assert [a.action for a in flips] == ["unsubscribe", "subscribe"]
    assert flips[0].actor == "张三家长(oMum)"

    help_text = mp(svc, "oMum", "帮助")
    assert "张三家长" in help_text and "储值卡" in help_text and "退订周报" in help_text and "解绑" in help_text
    for staff_only in ("班级卡", "预警", "撤销", "绑定码", "任务"):
        assert staff_only not in help_text
    assert "不能使用" in mp(svc, "oMum", "班级卡 计算机2301")


def test_unbinding_leaves_an_unbound_follower_who_sees_nothing(svc, session):
    code = code_for(svc, "wangfang", "绑定码 李四")
    assert "绑定成功" in mp(svc, "oLi", f"绑定 2023010102 {code}")
    assert "已解绑" in mp(svc, "oLi", "解绑")
    assert binding(session, "oLi") is None
    assert mp(svc, "oLi", "储值卡") == UNBOUND
    assert mp(svc, "oLi", "帮助") == UNBOUND
    assert mp(svc, "oLi", "全勤率 张三 95") == UNBOUND
    assert mp(svc, "oLi", "解绑") == UNBOUND
    actions = [a.action for a in session.scalars(select(AuditLog).where(AuditLog.entity == "follower_binding")
                                                 .order_by(AuditLog.id))]
    assert actions == ["bind", "unbind"]


def test_who_may_hand_out_codes(svc):
    teacher = say(svc, "chenjing", "绑定码 张三")  # 任课教师 of the class
    assert teacher == render("chat/not_allowed.txt", command="绑定码", actor=svc.directory.get(svc.sessions)
                             .actor("chenjing"), audience="staff")
    assert CODE.search(teacher) is None
    other_head = say(svc, "heping", "绑定码 2023010101")  # 班主任 of another class
    assert "不在你担任班主任或辅导员的班级" in other_head and CODE.search(other_head) is None
    assert "你不是计算机2301的班主任或辅导员" in say(svc, "heping", "家长绑定码 计算机2301")
    assert "找不到学生“张三”" in say(svc, "heping", "绑定码 张三")  # a name is looked up in their own classes only
    assert CODE.search(say(svc, "liuwei", "家长绑定码 2023010101"))  # the class's 辅导员 may
    assert "仅限教职工" in say(svc, "zhangsan", "绑定码 张三")


def test_binding_on_wecom_is_refused_politely(svc):
    code = code_for(svc, "wangfang", "绑定码 张三")
    for sender in ("wangfang", "zhangsan"):
        reply = say(svc, sender, f"绑定 2023010101 {code}")
        assert "公众号" in reply and "绑定成功" not in reply
    assert "公众号" in say(svc, "zhangsan", "解绑")
    assert "绑定成功" in mp(svc, "oZhang", f"绑定 2023010101 {code}")  # the refusals did not use the code


def test_an_unbound_follower_is_told_how_to_bind_and_shown_no_data(svc):
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    for text in ("储值卡", "储值卡 张三", "帮助", "你好", "班级卡 计算机2301"):
        assert mp(svc, "oStranger", text) == UNBOUND
    assert "绑定 学号 验证码" in UNBOUND
    assert "例如" in mp(svc, "oStranger", "绑定")  # 绑定 without its arguments: how to write it


def test_a_class_gets_a_code_per_student_each_usable_once(svc, session):
    reply = say(svc, "wangfang", "绑定码 计算机2301")
    lines = dict(re.findall(r"^(\d{10}) \S+ (\d{8})$", reply, re.M))
    assert sorted(lines) == ["2023010101", "2023010102", "2023010103", "2023010104", "2023010105"]
    assert "其余" not in reply
    assert len(reply.encode()) <= 2048
    for n, (no, code) in enumerate(sorted(lines.items())):
        assert "绑定成功" in mp(svc, f"o{n}", f"绑定 {no} {code}")
    assert len(session.scalars(select(FollowerBinding)).all()) == 5


def test_a_new_code_voids_the_older_and_a_reply_with_codes_is_never_stored(svc, session):
    first = code_for(svc, "wangfang", "绑定码 张三")
    reply = say(svc, "wangfang", "绑定码 张三", msg_key="codes-1")
    second = CODE.search(reply).group(1)
    stored = session.scalar(select(ProcessedMessage.reply).where(ProcessedMessage.msg_key == "console:codes-1"))
    assert stored == render("chat/bind_code_retry.txt") and second not in stored
    assert say(svc, "wangfang", "绑定码 张三", msg_key="codes-1") == stored  # WeChat's retry: no code again
    if first != second:
        assert mp(svc, "oZhang", f"绑定 2023010101 {first}") == REJECTED
    assert "绑定成功" in mp(svc, "oZhang", f"绑定 2023010101 {second}")


def test_five_wrong_tries_lock_the_follower_out_and_the_reply_says_until_when(svc, session):
    code = code_for(svc, "wangfang", "绑定码 张三")
    wrong = "11111111" if code != "11111111" else "22222222"
    for _ in range(4):
        assert mp(svc, "oBrute", f"绑定 2023010101 {wrong}") == REJECTED
    fifth = mp(svc, "oBrute", f"绑定 2023010101 {wrong}")
    assert "错误次数过多" in fifth and "2025-11-19 13:00" in fifth  # the fixed clock: noon, plus an hour
    locked = mp(svc, "oBrute", f"绑定 2023010101 {code}")  # even the right code
    assert locked == render("chat/bind_locked.txt", until="2025-11-19 13:00")
    assert binding(session, "oBrute") is None
    assert "绑定成功" in mp(svc, "oOther", f"绑定 2023010101 {code}")  # another follower is not locked


def test_a_new_student_binding_replaces_the_old_and_tells_its_owner(svc, session):
    mp(svc, "oOldPhone", f"绑定 2023010101 {code_for(svc, 'wangfang', '绑定码 张三')}")
    assert "绑定成功" in mp(svc, "oNewPhone", f"绑定 2023010101 {code_for(svc, 'wangfang', '绑定码 张三')}")
    assert binding(session, "oOldPhone") is None and binding(session, "oNewPhone").kind == "student"
    told = session.scalars(select(OutboxMessage).where(OutboxMessage.recipient == "oOldPhone")).all()
    assert len(told) == 1 and told[0].channel == "mp" and "张三" in told[0].body and "解除绑定" in told[0].body
    assert mp(svc, "oOldPhone", "储值卡") == UNBOUND


def test_at_most_four_parents(svc, session):
    for n in range(4):
        code = code_for(svc, "wangfang", "家长绑定码 张三")
        assert "身份：家长" in mp(svc, f"oParent{n}", f"绑定 2023010101 {code}")
    code = code_for(svc, "wangfang", "家长绑定码 张三")
    full = mp(svc, "oParent4", f"绑定 2023010101 {code}")
    assert "已绑定 4 位家长" in full
    assert "已解绑" in mp(svc, "oParent0", "解绑")
    assert "身份：家长" in mp(svc, "oParent4", f"绑定 2023010101 {code}")  # the code was not used up


def test_a_class_too_large_for_one_message_gets_the_codes_that_fit_and_no_others(svc, session, college):
    session.add_all([Student(student_no=f"20230199{n:02d}", name=f"学生{n:02d}号同学", class_id=college.se.id)
                     for n in range(90)])
    session.commit()
    reply = say(svc, "liuwei", "绑定码 软件技术2301")
    assert len(reply.encode()) <= 2048
    shown = re.findall(r"^(\d{10}) \S+ (\d{8})$", reply, re.M)
    assert 10 < len(shown) < 91
    assert f"以上 {len(shown)} 人（全班 91 人），其余 {91 - len(shown)} 人未生成" in reply
    assert "python -m bot binding codes --class 软件2301" in reply
    session.expire_all()
    assert len(session.scalars(select(BindCode)).all()) == len(shown)  # no code nobody can read
    no, code = shown[-1]
    assert "绑定成功" in mp(svc, "oLast", f"绑定 {no} {code}")
