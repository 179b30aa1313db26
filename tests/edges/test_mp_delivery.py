"""Pushes to Official Account followers: outbox rows of channel "mp" delivered through a local fake
of the API over HTTP (template or customer-service message, or failed with the reason), and who
gets the weekly card on which channel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.service import make_service
from core.config import ROOT, load_settings
from models.followers import note_follower
from models.outbox import enqueue
from models.schema import FollowerBinding, MpFollower, OutboxCall, OutboxMessage, Student
from scheduler.delivery import Deliverer, make_deliverer
from scheduler.runner import run_job
from tests.fakes.factories import small_college
from tests.fakes.fake_mp import FakeMp
from tests.fakes.fake_wecom import FakeWeCom
from wechat.mp_api import MpAPI
from wechat.wecom_api import WeComAPI

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = date(2025, 11, 24)
NOW = datetime(2025, 11, 24, 8, 15, tzinfo=TZ)
WEEKLY, NOTICE = "TPL_WEEKLY_0001", "TPL_NOTICE_0002"
OPENID = "oAbCdEfGh_zhangsan_mum"


@pytest.fixture
def mp():
    with FakeMp(templates={WEEKLY, NOTICE}) as server:
        yield server


@pytest.fixture
def wecom():
    with FakeWeCom() as server:
        yield server


def settings_for(db_url, redis_url, wecom: FakeWeCom, mp: FakeMp, **changes):
    return load_settings(dict({
        "database_url": db_url, "redis_url": redis_url, "secret_key": "t",
        "wecom_corp_id": wecom.corp_id, "wecom_secret": wecom.secret, "wecom_agent_id": str(wecom.agent_id),
        "wecom_token": "tok", "wecom_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "wecom_api_base": wecom.base_url,
        "mp_app_id": mp.app_id, "mp_app_secret": mp.secret, "mp_api_base": mp.base_url,
        "mp_template_weekly": WEEKLY, "mp_template_notice": NOTICE,
    }, **changes))


@pytest.fixture
def settings(clean_db, db_url, redis_url, wecom, mp):
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    return settings_for(db_url, redis_url, wecom, mp)


def service_with(settings, **changes):
    return make_service(replace(settings, **changes), clock=lambda: NOW)


@pytest.fixture
def service(settings):
    return service_with(settings)


def queue(service, *items, channel="mp", url=None):
    with service.sessions() as session:
        made = [enqueue(session, *item, channel=channel, url=url) for item in items]
        session.commit()
    return made


def rows(service):
    with service.sessions() as session:
        return session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def wrote(service, openid, hours_ago: float):
    """The follower wrote to the account that long ago (as the callback notes it)."""
    with service.sessions() as session:
        note_follower(session, openid, NOW - timedelta(hours=hours_ago))
        session.commit()


CARD = ("张三同学的家长您好，这是张三上周（11月17日–11月23日）的储值卡：\n总分 89.0，一周增值 -6.0\n"
        "学业发展 89.0（-6.0）\n——班主任 王芳")


def test_the_weekly_card_goes_as_a_template_message(service, mp, wecom):
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD))
    report = make_deliverer(service).flush(NOW)
    assert report.sent == 1 and report.calls == 1
    [body] = mp.messages[OPENID]
    assert body["template_id"] == WEEKLY and "url" not in body
    data = {k: v["value"] for k, v in body["data"].items()}
    assert data == {"first": "张三同学的家长您好，这是张三上周（11月17日–11月23日）的储值卡：",
                    "keyword1": "总分 89.0，一周增值 -6.0", "keyword2": "2025年11月24日 08:15",
                    "remark": "学业发展 89.0（-6.0）\n——班主任 王芳"}
    assert [r.status for r in rows(service)] == ["sent"]
    assert wecom.calls == []  # nothing for WeCom
    assert make_deliverer(service).flush(NOW + timedelta(minutes=5)).calls == 0
    assert len(mp.messages[OPENID]) == 1


def test_other_pushes_use_the_notice_template_and_link_the_page(service, mp):
    queue(service, (OPENID, "warning_opened", "w1", "张三的预警已处理。\n说明：已谈话"),
          url="http://localhost:8000/h5/card")
    make_deliverer(service).flush(NOW)
    [body] = mp.messages[OPENID]
    assert body["template_id"] == NOTICE and body["url"] == "http://localhost:8000/h5/card"


def test_without_a_template_a_customer_service_message_within_48_hours(settings, mp):
    service = service_with(settings, mp_template_weekly=None, mp_template_notice=None)
    wrote(service, OPENID, hours_ago=47)
    mp.follower_wrote(OPENID, at=time.time() - 47 * 3600)
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD), (OPENID, "notice", "n1", "另一条通知"))
    report = make_deliverer(service).flush(NOW)
    assert report.sent == 2 and report.calls == 1  # one person's text rows: one bundled message
    [text] = mp.received[OPENID]
    assert text.startswith(CARD) and text.endswith("另一条通知")
    assert mp.messages[OPENID][0]["msgtype"] == "text"


def test_without_a_template_and_the_window_closed_the_row_fails_with_the_reason(settings, mp, db_url, tmp_path):
    service = service_with(settings, mp_template_weekly=None, mp_template_notice=None)
    wrote(service, OPENID, hours_ago=49)
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD))
    report = make_deliverer(service).flush(NOW)
    assert report.failed == 1 and report.calls == 0
    [row] = rows(service)
    assert row.status == "failed" and "48 小时" in row.last_error and "模板" in row.last_error
    assert mp.calls == []
    env = dict(os.environ, DATABASE_URL=db_url, SECRET_KEY="test")
    env.pop("REDIS_URL", None)
    shown = subprocess.run([sys.executable, "-m", "bot", "outbox", "failed"], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"#{row.id} {OPENID} student_weekly_card 2025-W47: 未设置模板消息" in shown.stdout
    assert "共 1 条发送失败。" in shown.stdout


def test_over_the_quota_and_no_longer_following_are_permanent(settings, mp):
    service = service_with(settings, mp_template_notice=None)
    for openid in ("o-quota", "o-gone"):
        wrote(service, openid, hours_ago=1)
        mp.follower_wrote(openid)
    mp.unfollow("o-gone")
    mp.fail_next(1, errcode=45047, path="cgi-bin/message/custom/send")
    queue(service, ("o-quota", "notice", "n1", "一"), ("o-gone", "notice", "n1", "二"),
          ("o-gone", "student_weekly_card", "2025-W47", CARD))
    report = make_deliverer(service).flush(NOW)
    assert report.failed == 3 and report.sent == 0
    reasons = {(r.recipient, r.purpose): r.last_error for r in rows(service) if r.status == "failed"}
    assert "45047" in reasons[("o-quota", "notice")] and "条数上限" in reasons[("o-quota", "notice")]
    assert "取消关注" in reasons[("o-gone", "notice")] and "43004" in reasons[("o-gone", "student_weekly_card")]
    with service.sessions() as session:
        assert session.get(MpFollower, "o-gone").following is False
    assert make_deliverer(service).flush(NOW + timedelta(hours=3)).calls == 0
    assert mp.received == {}


def test_a_server_error_backs_off_and_the_message_goes_once(service, mp):
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD))
    mp.fail_next(1, http_status=500, path="cgi-bin/message/template/send")
    mp.fail_next(1, errcode=45009, path="cgi-bin/message/template/send")
    first = make_deliverer(service).flush(NOW)
    assert first.deferred == 1 and first.sent == 0
    [row] = rows(service)
    assert row.status == "pending" and row.attempts == 1 and "HTTP 500" in row.last_error
    assert make_deliverer(service).flush(NOW).calls == 0  # not due yet: back-off
    assert make_deliverer(service).flush(NOW + timedelta(minutes=3)).deferred == 1
    assert make_deliverer(service).flush(NOW + timedelta(hours=1)).sent == 1
    assert len(mp.received[OPENID]) == 1
    with service.sessions() as session:
        assert session.scalars(select(OutboxCall)).all() == []


def test_a_call_without_an_answer_is_not_sent_again_blindly(service, settings, mp, wecom):
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD))
    mp.fail_next(1, delay=1.2, path="cgi-bin/message/template/send")  # WeChat delivers, the answer is late
    deliverer = Deliverer(service, WeComAPI(settings), None, mp=MpAPI(settings, None, timeout=0.5))
    report = deliverer.flush(NOW)
    assert report.failed == 1
    time.sleep(1.0)
    assert len(mp.received[OPENID]) == 1
    [row] = rows(service)
    assert row.status == "failed" and "无法确定" in row.last_error and "outbox retry" in row.last_error
    assert make_deliverer(service).flush(NOW + timedelta(hours=1)).calls == 0
    assert len(mp.received[OPENID]) == 1


def test_killed_during_a_call_the_row_fails_as_unknown_and_is_not_sent_twice(service, settings, mp, db_url,
                                                                              redis_url):
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD))
    mp.hold_next(1, path="cgi-bin/message/template/send")
    script = textwrap.dedent(f"""
        from dataclasses import replace
        from datetime import datetime
        from zoneinfo import ZoneInfo
        from core.config import load_settings
        from bot.service import make_service
        from scheduler.delivery import make_deliverer
        settings = load_settings({{"database_url": {db_url!r}, "redis_url": {redis_url!r}, "secret_key": "t",
            "mp_app_id": {mp.app_id!r}, "mp_app_secret": {mp.secret!r}, "mp_api_base": {mp.base_url!r},
            "mp_template_weekly": {WEEKLY!r}}})
        now = datetime(2025, 11, 24, 8, 15, tzinfo=ZoneInfo("Asia/Shanghai"))
        make_deliverer(make_service(settings, clock=lambda: now)).flush(now)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ))
    try:
        assert mp.wait_held(60), "the call reached WeChat"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mp.release()
    assert len(mp.received[OPENID]) == 1
    [row] = rows(service)
    assert row.status == "inflight"
    # The dead flusher's claim lapses; the next flush finds a call whose outcome is unknown.
    report = make_deliverer(service).flush(NOW + timedelta(minutes=5))
    assert report.failed == 1 and report.calls == 0
    [row] = rows(service)
    assert row.status == "failed" and "无法确定" in row.last_error
    assert len(mp.received[OPENID]) == 1
    with service.sessions() as session:
        assert session.scalars(select(OutboxCall)).all() == []


def test_without_the_official_account_configured_the_rows_fail_saying_so(settings, mp, wecom):
    service = service_with(settings, mp_app_id=None, mp_app_secret=None)
    queue(service, (OPENID, "student_weekly_card", "2025-W47", CARD))
    queue(service, ("wangfang", "p", "1", "给王芳"), channel="wecom")
    report = make_deliverer(service).flush(NOW)
    assert report.sent == 1 and report.failed == 1
    by = {r.recipient: r for r in rows(service)}
    assert by["wangfang"].status == "sent" and "公众号未配置" in by[OPENID].last_error
    assert mp.calls == []


# ── who gets the weekly card, on which channel ──────────────────────────────

def bind(session, student_no: str, openid: str, kind: str, weekly_card: bool = True) -> None:
    student = session.scalar(select(Student).where(Student.student_no == student_no))
    session.add(FollowerBinding(openid=openid, student_id=student.id, kind=kind, weekly_card=weekly_card))
    session.commit()


def test_weekly_card_channels_parents_and_a_rerun(settings, session, db_url, redis_url, mp, wecom):
    small_college(session)
    bind(session, "2023010101", "o-zhangsan", "student")  # 张三: WeCom too, so WeCom only
    bind(session, "2023010101", OPENID, "parent")
    bind(session, "2023010101", "o-zhangsan-dad", "parent", weekly_card=False)  # 退订周报
    bind(session, "2023010104", "o-liuyang", "student")  # 刘洋 (…104): no WeCom account
    bind(session, "2023010103", "o-wangwu-mum", "parent")  # 王五 turned his own card off
    wangwu = session.scalar(select(Student).where(Student.student_no == "2023010103"))
    wangwu.weekly_card = False
    session.commit()

    job = make_service(settings, clock=lambda: datetime.combine(MONDAY, clock_time(10, 0), TZ))  # WeCom on
    first = run_job(job, "student_weekly_card", datetime.combine(MONDAY, clock_time(8, 10), TZ))
    assert first.result == ("2025-W47: queued 7 weekly cards, 0 already queued, 1 unsubscribed, "
                            "1 without WeCom account or binding, 0 without 班主任; 4 on WeCom, 1 to students and "
                            "2 to parents on the Official Account, 1 parents unsubscribed")
    again = run_job(job, "student_weekly_card", datetime.combine(MONDAY, clock_time(15, 0), TZ))
    assert again.result.startswith("2025-W47: queued 0 weekly cards, 7 already queued")

    session.expire_all()
    queued = {r.recipient: r for r in session.scalars(select(OutboxMessage))}
    assert {k: r.channel for k, r in queued.items()} == {
        "zhangsan": "wecom", "lisi": "wecom", "zhaoliu": "wecom", "qianqi": "wecom",
        "o-liuyang": "mp", OPENID: "mp", "o-wangwu-mum": "mp"}
    assert queued[OPENID].body.splitlines()[0] == "张三同学的家长您好，这是张三上周（11月17日–11月23日）的储值卡："
    assert queued["o-wangwu-mum"].body.splitlines()[0].startswith("王五同学的家长您好")
    assert queued["o-liuyang"].body.startswith("刘洋同学，这是你上周")
    # The parent's card says what the student's says, addressed to the parent.
    student, parent = queued["zhangsan"].body.splitlines(), queued[OPENID].body.splitlines()
    assert student[1:-1] == [line.replace("需要张三处理", "需要你处理") for line in parent[1:-1]]
    assert student[-1] != parent[-1] and parent[-1].endswith(queued[OPENID].url)  # each their own link

    report = make_deliverer(service_with(settings)).flush(NOW)
    assert report.sent == 7
    assert set(wecom.received) == {"zhangsan", "lisi", "zhaoliu", "qianqi"}
    assert set(mp.received) == {"o-liuyang", OPENID, "o-wangwu-mum"}
    assert "o-zhangsan" not in mp.received and "o-zhangsan-dad" not in mp.received
    assert all(m["template_id"] == WEEKLY for sent in mp.messages.values() for m in sent)
    assert [m["url"] for m in mp.messages[OPENID]] == [queued[OPENID].url]  # the template opens the card page


def test_without_wecom_configured_a_student_bound_on_the_official_account_gets_the_card_there(
        settings, session, mp):
    """The demo's case: WeCom is not set up, so 张三's WeCom account reaches nobody; his binding does."""
    small_college(session)
    bind(session, "2023010101", "o-zhangsan", "student")
    job = make_service(replace(settings, wecom_corp_id=None, wecom_token=None, wecom_aes_key=None),
                       clock=lambda: datetime.combine(MONDAY, clock_time(10, 0), TZ))
    run_job(job, "student_weekly_card", datetime.combine(MONDAY, clock_time(8, 10), TZ))
    session.expire_all()
    channels = {r.recipient: r.channel for r in session.scalars(select(OutboxMessage))}
    assert channels["o-zhangsan"] == "mp" and "zhangsan" not in channels
    assert channels["lisi"] == "wecom"  # no binding: printed in a console chat, as before


def test_a_template_message_leaves_its_own_link_out_of_the_text():
    """The template message opens the page itself: its remark does not repeat the link as text."""
    from scheduler.mp_delivery import template_data

    url = "https://college.example/h5/card?t=abc"
    data = template_data(f"张三同学的家长您好\n总分 96.6\n本周：全勤率 100%\n查看图表：{url}", NOW, url)
    assert url not in "".join(data.values()) and data["remark"] == "本周：全勤率 100%"
