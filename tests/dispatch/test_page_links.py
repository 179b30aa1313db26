"""Chat answers that show a card, a class card or the digest end with a link to their page, signed for
the viewer on their channel (PRODUCT.md §4.2). Opened in a browser (the Flask test client) the link
shows the same numbers and only what that viewer may see, and WeChat's 2048 bytes never cut it."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from datetime import time as clock_time
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot import create_app
from bot import service as runtime
from bot.pipeline import handle_message
from core.config import load_settings
from core.messages import IncomingMessage
from models.page_links import read_link
from models.schema import FollowerBinding, Student
from tests.fakes.factories import small_college

BASE = "https://czk.example.edu.cn"
MAX_BYTES = 2048
LINK = re.compile(r"查看图表：(https://czk\.example\.edu\.cn/h5/\S+)")
_keys = itertools.count(1)


@pytest.fixture
def svc(session, db_url, redis_url, today):
    small_college(session)
    settings = load_settings({"database_url": db_url, "redis_url": redis_url, "secret_key": "test",
                              "public_base_url": BASE})
    tz = ZoneInfo(settings.timezone)
    return runtime.make_service(settings, clock=lambda: datetime.combine(today, clock_time(10, 0), tz))


def say(svc, userid: str, text: str, channel: str = "console", key: str | None = None) -> str:
    msg = IncomingMessage(channel, userid, text, msg_key=key or f"link-{next(_keys)}")
    return handle_message(svc, msg).text


def link_of(reply: str) -> str:
    """The link on the reply's last line (asserting it is there, whole)."""
    found = LINK.fullmatch(reply.splitlines()[-1])
    assert found, reply
    return found.group(1)


def opened(svc, url: str):
    """What a browser shows for the link: the page after the sign-in redirect."""
    client = create_app(service=svc).test_client()
    first = client.get(url[len(BASE):])
    assert first.status_code == 302, first.status_code
    return client.get(first.headers["Location"])


def text_of(page) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.get_data(as_text=True)))


def total_in(reply: str) -> str:
    return re.search(r"总分 (\S+)", reply).group(1)


@pytest.mark.parametrize("channel", ["wecom", "console"])
def test_the_own_card_ends_with_a_link_that_shows_the_same_total(svc, channel: str) -> None:
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95 李四 80")
    assert "已记录" in say(svc, "chenjing", "作业完成率 张三 88")
    reply = say(svc, "zhangsan", "储值卡", channel)
    url = link_of(reply)
    assert urlsplit(url).path == "/h5/card"
    assert read_link(svc.settings, url.split("?t=")[1]) == (channel, "zhangsan")
    page = opened(svc, url)
    assert page.status_code == 200 and "张三的储值卡" in text_of(page)
    assert re.search(rf"总分 {re.escape(total_in(reply))}\b", text_of(page)), text_of(page)[:300]


def test_a_subject_teachers_link_shows_no_psychology(svc) -> None:
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    assert "已记录" in say(svc, "liuwei", "心理辅导 张三 2")
    reply = say(svc, "chenjing", "储值卡 张三", "wecom")
    assert "心理" not in reply
    url = link_of(reply)
    assert urlsplit(url).path == "/h5/card/2023010101"
    page = opened(svc, url)
    assert page.status_code == 200 and "全勤率" in text_of(page)
    assert "心理" not in page.get_data(as_text=True)
    # The class's 辅导员 asks the same: a link signed for him, which does show it.
    full = opened(svc, link_of(say(svc, "liuwei", "储值卡 2023010101", "wecom")))
    assert "心理辅导频次" in text_of(full)


def test_the_class_card_links_to_the_class_page(svc) -> None:
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95 李四 80")
    reply = say(svc, "wangfang", "班级卡 计算机2301", "wecom")
    url = link_of(reply)
    assert unquote(urlsplit(url).path) == "/h5/class/计算机2301"
    page = opened(svc, url)
    assert page.status_code == 200 and "计算机2301 · 班级卡" in text_of(page)


def test_the_digest_links_to_the_dashboard(svc) -> None:
    reply = say(svc, "wujun", "本周概况", "wecom")
    assert reply.startswith("储值卡周报 · 信息工程系") and len(reply.encode()) <= MAX_BYTES
    url = link_of(reply)
    assert urlsplit(url).path == "/h5/dashboard"
    page = opened(svc, url)
    assert page.status_code == 200 and "储值卡周报 · 信息工程系" in text_of(page)


def test_a_parents_link_opens_the_childs_card_without_sensitive_points(svc, session) -> None:
    zhang = session.scalar(select(Student.id).where(Student.student_no == "2023010101"))
    session.add(FollowerBinding(openid="oPARENT", student_id=zhang, kind="parent"))
    session.commit()
    assert "已记录" in say(svc, "liuwei", "心理辅导 张三 2")
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    reply = say(svc, "oPARENT", "储值卡", "mp")
    url = link_of(reply)
    assert read_link(svc.settings, url.split("?t=")[1]) == ("mp", "oPARENT")
    page = opened(svc, url)
    assert page.status_code == 200 and "张三的储值卡" in text_of(page) and "全勤率" in text_of(page)
    assert "心理" not in page.get_data(as_text=True)


def test_a_long_card_gives_up_lines_not_its_link(svc) -> None:
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    long = "最近多门课程作业没有按时提交并且上课经常迟到，需要尽快谈话了解原因" * 12
    for category in ("学业", "违纪", "就业困难"):
        assert "预警 #" in say(svc, "wangfang", f"预警 张三 {category} {long}")
    reply = say(svc, "wangfang", "储值卡 张三", "wecom")
    assert len(reply.encode("utf-8")) <= MAX_BYTES
    lines = reply.splitlines()
    assert lines[-2] == "…" and lines[0].startswith("张三（计算机2301）储值卡")
    assert opened(svc, link_of(reply)).status_code == 200  # whole: it still signs in


def test_a_retry_gets_the_same_reply_and_its_link_still_opens(svc) -> None:
    first = say(svc, "zhangsan", "储值卡", "wecom", key="retry-1")
    again = say(svc, "zhangsan", "储值卡", "wecom", key="retry-1")
    assert again == first
    assert opened(svc, link_of(again)).status_code == 200


def test_refusals_carry_no_link(svc) -> None:
    for userid, text in (("zhangsan", "储值卡 李四"), ("heping", "储值卡 张三"), ("heping", "班级卡 计算机2301"),
                         ("wangfang", "储值卡"), ("wangfang", "班级卡 不存在"), ("wangfang", "本周概况")):
        assert "http" not in say(svc, userid, text, "wecom"), (userid, text)
