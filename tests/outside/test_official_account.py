"""Issue 15 tried as a new user would, every step a process: the demo college, a 班主任 asking for
binding codes in the console chat, a student and a parent binding on `/wechat/mp` of `python -m bot
serve` (plaintext and safe mode, signed and encrypted as WeChat does), their cards, and the weekly
card reaching both of them once through a local fake of the Official Account API."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from sqlalchemy.engine import Engine

from tests.fakes.fake_mp import FakeMp
from tests.fakes.processes import free_port
from tests.fakes.wechat_mp import AES_KEY, APP_ID, TOKEN, MpSender, text_msg
from tests.outside.conftest import bot, bot_env, ok, scalar, web_process

STUDENT_OPENID = "oZhangSan0000000000000000001"
PARENT_OPENID = "oZhangSanMum000000000000002"
STRANGER_OPENID = "oStranger00000000000000000003"


@pytest.fixture(scope="module")
def fake_mp() -> Iterator[FakeMp]:
    with FakeMp(app_id=APP_ID) as fake:
        yield fake


@pytest.fixture(scope="module")
def env(fresh_db: str, fake_mp: FakeMp):
    values = bot_env(fresh_db, MP_APP_ID=APP_ID, MP_APP_SECRET=fake_mp.secret, MP_TOKEN=TOKEN, MP_AES_KEY=AES_KEY,
                     MP_API_BASE=fake_mp.base_url)
    ok(bot(values, "db", "upgrade"))
    ok(bot(values, "demo"))
    return values


def code_in(reply: str) -> str:
    found = set(re.findall(r"(?<!\d)\d{8}(?!\d)", reply))
    assert len(found) == 1, reply
    return found.pop()


def test_a_student_and_a_parent_bind_see_the_card_and_get_the_weekly_card_once(env, db: Engine, fake_mp: FakeMp,
                                                                              tmp_path):
    student_no = scalar(db, "SELECT student_no FROM student WHERE wecom_userid = 'zhangsan'")
    head = scalar(db, "SELECT st.wecom_userid FROM school_class c JOIN staff st ON st.id = c.head_teacher_id "
                      "JOIN student s ON s.class_id = c.id WHERE s.wecom_userid = 'zhangsan'")
    counsellor = scalar(db, "SELECT st.wecom_userid FROM school_class c JOIN staff st ON st.id = c.counsellor_id "
                            "JOIN student s ON s.class_id = c.id WHERE s.wecom_userid = 'zhangsan'")
    # A sensitive point on 张三's card, recorded by his 辅导员: the student sees it, the parent never.
    assert "已记录" in ok(bot(env, "chat", "--as", str(counsellor), stdin=f"心理辅导频次 {student_no}\n"))
    asked = ok(bot(env, "chat", "--as", str(head), stdin="绑定码 张三\n"))
    student_code = code_in(asked)
    parent_code = code_in(ok(bot(env, "chat", "--as", str(head), stdin="家长绑定码 张三\n")))
    assert scalar(db, "SELECT count(*) FROM bind_code WHERE code_hash LIKE '%" + student_code + "%'") == 0

    port = free_port()
    argv = [sys.executable, "-m", "bot", "serve", "--port", str(port)]
    with web_process(argv, env, port, tmp_path / "serve.log") as server:
        wechat = MpSender(server.base)
        # Someone who is not bound is shown no data, only how to bind.
        stranger = wechat.reply_text(wechat.plain(text_msg("储值卡", STRANGER_OPENID)))
        assert "绑定" in stranger and "张三" not in stranger

        bound = wechat.reply_text(wechat.plain(text_msg(f"绑定 {student_no} {student_code}", STUDENT_OPENID)))
        assert "张三" in bound, bound
        card = wechat.reply_text(wechat.plain(text_msg("储值卡", STUDENT_OPENID)))
        assert "张三" in card and "总分" in card and "心理辅导频次" in card, card

        again = wechat.reply_text(wechat.plain(text_msg(f"绑定 {student_no} {student_code}", STRANGER_OPENID)))
        assert "张三" not in again and "验证码" in again, again
        assert scalar(db, f"SELECT count(*) FROM follower_binding WHERE openid = '{STRANGER_OPENID}'") == 0

        # The parent writes in safe mode: the reply comes back encrypted.
        resp = wechat.safe(text_msg(f"绑定 {student_no} {parent_code}", PARENT_OPENID))
        assert "张三" in wechat.reply_text(resp, encrypted=True)
        parents_card = wechat.reply_text(wechat.safe(text_msg("储值卡", PARENT_OPENID)), encrypted=True)
        assert "张三" in parents_card and "总分" in parents_card, parents_card
        assert "心理" not in parents_card, parents_card
        total = re.search(r"总分\D*([\d.]+)", card)
        assert total and total.group(1) in parents_card  # the same card, less the sensitive point

    # The Monday after: the weekly card job, then the outbox, as the scheduler would run them.
    today = date.today()
    monday = today + timedelta(days=(7 - today.weekday()) % 7 or 7)
    for follower in (STUDENT_OPENID, PARENT_OPENID):
        fake_mp.follower_wrote(follower)
    for _ in range(2):  # a rerun of both sends nothing new
        ok(bot(env, "jobs", "run", "student_weekly_card", "--now", f"{monday.isoformat()}T08:10:00+08:00"))
        ok(bot(env, "outbox", "flush"))
    assert len(fake_mp.received[STUDENT_OPENID]) == 1, fake_mp.received
    assert len(fake_mp.received[PARENT_OPENID]) == 1, fake_mp.received
    assert "张三" in fake_mp.received[STUDENT_OPENID][0]
    assert "家长" in fake_mp.received[PARENT_OPENID][0]
    assert "心理" not in fake_mp.received[PARENT_OPENID][0]
    assert STRANGER_OPENID not in fake_mp.received
