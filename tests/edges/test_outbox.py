"""The outbox delivering through a local fake WeCom API over HTTP: bundling, batching, faults, crashes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.service import make_service
from core.config import ROOT, load_settings
from models.outbox import enqueue
from models.schema import OutboxCall, OutboxMessage
from scheduler.delivery import Deliverer, make_deliverer
from scheduler.sending import bundle
from tests.fakes.fake_wecom import FakeWeCom
from wechat.wecom_api import MAX_TEXT_BYTES

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2025, 11, 21, 15, 10, tzinfo=TZ)


@pytest.fixture
def fake():
    with FakeWeCom() as server:
        yield server


@pytest.fixture
def settings(clean_db, db_url, redis_url, fake):
    return load_settings({
        "database_url": db_url, "redis_url": redis_url, "secret_key": "t",
        "wecom_corp_id": fake.corp_id, "wecom_secret": fake.secret, "wecom_agent_id": str(fake.agent_id),
        "wecom_token": "tok", "wecom_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "wecom_api_base": fake.base_url,
    })


@pytest.fixture
def service(settings, redis_url):
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    return make_service(settings, clock=lambda: NOW)


def queue(service, *items):
    with service.sessions() as session:
        made = [enqueue(session, *item) for item in items]
        session.commit()
    return made


def rows(service):
    with service.sessions() as session:
        return session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def stored_calls(service):
    with service.sessions() as session:
        return session.scalars(select(OutboxCall)).all()


def test_the_same_key_is_queued_once(service):
    first, again = queue(service, ("wangfang", "weekend_reminders", "2025-W47", "请录入全勤率"),
                         ("wangfang", "weekend_reminders", "2025-W47", "请录入全勤率"))
    assert first is not None and again is None
    assert len(rows(service)) == 1


def test_one_person_gets_one_bundled_message_and_identical_bodies_share_a_call(service, fake):
    queue(service,
          ("wangfang", "weekend_reminders", "2025-W47", "提醒一"),
          ("wangfang", "task_deadlines", "7:d3", "提醒二"),
          ("chenjing", "digest", "2025-W47", "同一内容"),
          ("liuwei", "digest", "2025-W47", "同一内容"))
    report = make_deliverer(service).flush(NOW)
    assert report.sent == 4
    assert len(fake.received["wangfang"]) == 1
    assert "提醒一" in fake.received["wangfang"][0] and "提醒二" in fake.received["wangfang"][0]
    assert fake.received["chenjing"] == ["同一内容"] and fake.received["liuwei"] == ["同一内容"]
    touser = sorted(m["touser"] for m in fake.sent_messages())
    assert touser == ["chenjing|liuwei", "wangfang"] or touser == ["liuwei|chenjing", "wangfang"]
    assert fake.calls_to("gettoken") == 1
    assert {r.status for r in rows(service)} == {"sent"}
    # A second flush has nothing to do.
    assert make_deliverer(service).flush(NOW + timedelta(minutes=5)).calls == 0
    assert len(fake.sent_messages()) == 2


def test_bundles_stay_under_the_size_limit():
    class Row:
        def __init__(self, body):
            self.body = body

    parts = bundle([Row("字" * 300) for _ in range(10)])
    assert len(parts) > 1
    assert all(len(text.encode()) <= MAX_TEXT_BYTES for text, _ in parts)
    assert sum(len(group) for _, group in parts) == 10


def test_a_thousand_and_one_recipients_take_two_calls(service, fake):
    queue(service, *[(f"u{i}", "digest", "2025-W47", "同一内容") for i in range(1001)])
    report = make_deliverer(service).flush(NOW)
    assert report.sent == 1001
    sizes = sorted(len(m["touser"].split("|")) for m in fake.sent_messages())
    assert sizes == [1, 1000]


def test_rate_limited_twice_then_delivered_exactly_once(service, fake):
    queue(service, ("wangfang", "weekend_reminders", "2025-W47", "请录入全勤率"))
    fake.fail_next(2, errcode=45009, path="message/send")
    first = make_deliverer(service).flush(NOW)
    assert first.deferred == 1 and not fake.received
    [row] = rows(service)
    assert row.status == "pending" and row.attempts == 1 and "45009" in row.last_error
    assert make_deliverer(service).flush(NOW).calls == 0  # not due yet: back-off
    second = make_deliverer(service).flush(NOW + timedelta(minutes=2))
    assert second.deferred == 1
    third = make_deliverer(service).flush(NOW + timedelta(hours=2))
    assert third.sent == 1
    assert fake.received["wangfang"] == ["请录入全勤率"]
    [row] = rows(service)
    assert row.status == "sent" and row.attempts == 3


def test_http_500_and_system_busy_back_off(service, fake):
    queue(service, ("wangfang", "p", "1", "一"))
    fake.fail_next(1, http_status=500, path="message/send")
    fake.fail_next(1, errcode=-1, path="message/send")
    make_deliverer(service).flush(NOW)
    make_deliverer(service).flush(NOW + timedelta(minutes=5))
    make_deliverer(service).flush(NOW + timedelta(hours=1))
    assert fake.received["wangfang"] == ["一"]


def test_expired_token_is_refreshed_once_and_the_message_goes(service, fake):
    queue(service, ("wangfang", "p", "1", "一"))
    make_deliverer(service).flush(NOW)
    queue(service, ("wangfang", "p", "2", "二"))
    fake.expire_tokens()
    report = make_deliverer(service).flush(NOW + timedelta(minutes=1))
    assert report.sent == 1
    assert fake.received["wangfang"] == ["一", "二"]
    assert fake.calls_to("gettoken") == 2


def test_permanent_errors_fail_with_their_reason(service, fake):
    fake.known_users = {"wangfang"}
    queue(service, ("wangfang", "p", "1", "好"), ("ghost", "p", "1", "好"), ("wangfang", "q", "1", "字" * 700))
    make_deliverer(service).flush(NOW)
    by_recipient = {(r.recipient, r.purpose): r for r in rows(service)}
    assert by_recipient[("wangfang", "p")].status == "sent"
    assert by_recipient[("ghost", "p")].status == "failed"
    assert "invaliduser" in by_recipient[("ghost", "p")].last_error
    # 700 characters of Chinese are 2100 bytes: over WeCom's limit, refused for good.
    assert by_recipient[("wangfang", "q")].status == "failed"
    assert "45002" in by_recipient[("wangfang", "q")].last_error


def test_console_channel_prints_what_it_would_send(clean_db, db_url):
    service = make_service(load_settings({"database_url": db_url, "secret_key": "t"}), clock=lambda: NOW)
    queue(service, ("wangfang", "weekend_reminders", "2025-W47", "请录入全勤率"))
    out = io.StringIO()
    report = Deliverer(service, None, out).flush(NOW)
    assert report.printed == 1 and "请录入全勤率" in out.getvalue() and "wangfang" in out.getvalue()
    assert rows(service)[0].status == "sent"


def test_killed_mid_batch_loses_nothing_and_doubles_nothing(service, settings, fake, db_url, redis_url):
    people = [f"t{i:02d}" for i in range(6)]
    queue(service, *[(p, "weekend_reminders", "2025-W47", f"给{p}的提醒") for p in people])
    # Every call takes 0.6 s at the fake; kill the sender during the third call.
    fake.fail_next(6, delay=0.6, path="message/send")
    script = textwrap.dedent(f"""
        from datetime import datetime
        from zoneinfo import ZoneInfo
        from core.config import load_settings
        from bot.service import make_service
        from scheduler.delivery import make_deliverer
        settings = load_settings({{"database_url": {db_url!r}, "redis_url": {redis_url!r}, "secret_key": "t",
            "wecom_corp_id": {fake.corp_id!r}, "wecom_secret": {fake.secret!r},
            "wecom_agent_id": {str(fake.agent_id)!r}, "wecom_token": "tok",
            "wecom_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wecom_api_base": {fake.base_url!r}}})
        now = datetime(2025, 11, 21, 15, 10, tzinfo=ZoneInfo("Asia/Shanghai"))
        make_deliverer(make_service(settings, clock=lambda: now)).flush(now)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ))
    deadline = time.time() + 30
    while fake.calls_to("message/send") < 3 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.8)  # let the fake finish the call it was serving
    # Later, the next flush (after the dead process's claim has lapsed) finishes the job.
    make_deliverer(service).flush(NOW + timedelta(minutes=5))
    # The call in flight when the process died is made again under WeCom's duplicate check:
    # every row sent, every person sees their message once.
    final = rows(service)
    assert [r.status for r in final] == ["sent"] * 6
    for person in people:
        assert fake.received[person] == [f"给{person}的提醒"], person
    assert stored_calls(service) == []


def test_the_administrator_sees_failed_deliveries_in_chat(service, fake, session, db_url, today):
    from tests.fakes.chat import make_service, say
    from tests.fakes.factories import small_college

    small_college(session)
    fake.known_users = {"wangfang"}
    queue(service, ("ghost", "weekend_reminders", "2025-W47", "提醒"))
    make_deliverer(service).flush(NOW)
    chat = make_service(db_url, today)
    reply = say(chat, "admin", "发送失败")
    assert "共 1 条消息未能送达" in reply and "ghost" in reply and "invaliduser" in reply
    assert "管理员" in say(chat, "wangfang", "发送失败") or "不能使用" in say(chat, "wangfang", "发送失败")
