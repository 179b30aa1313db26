"""The outbox is at least once and looks exactly once to people: WeCom's duplicate check on every
call, a call whose outcome is unknown made again with its stored payload, nothing marked sent
without a channel that sent it, claims kept while a long flush runs, `outbox retry`."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from bot.channels.console import run_console
from bot.service import make_service
from core.config import ROOT, load_settings
from scheduler.delivery import Deliverer, make_deliverer, retry_failed
from scheduler.sending import DUPLICATE_CHECK_S
from tests.edges.test_outbox import NOW, queue, rows, stored_calls
from tests.fakes.fake_wecom import FakeWeCom
from wechat.wecom_api import WeComAPI

AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"


@pytest.fixture
def fake():
    with FakeWeCom() as server:
        yield server
        server.release()


def wecom_settings(db_url, redis_url, fake, **more):
    return load_settings({
        "database_url": db_url, "redis_url": redis_url, "secret_key": "t",
        "wecom_corp_id": fake.corp_id, "wecom_secret": fake.secret, "wecom_agent_id": str(fake.agent_id),
        "wecom_token": "tok", "wecom_aes_key": AES_KEY, "wecom_api_base": fake.base_url, **more,
    })


@pytest.fixture
def service(clean_db, db_url, redis_url, fake):
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    return make_service(wecom_settings(db_url, redis_url, fake), clock=lambda: NOW)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable(service) -> Deliverer:
    """A deliverer whose WeCom cannot be reached at all (connection refused)."""
    settings = load_settings({**service.settings.__dict__,
                              "wecom_api_base": f"http://127.0.0.1:{closed_port()}/cgi-bin/"})
    return Deliverer(service, WeComAPI(settings, None, timeout=2.0), None)


def test_every_call_asks_for_the_duplicate_check_and_leaves_no_stored_call(service, fake):
    queue(service, ("wangfang", "p", "1", "一"), ("chenjing", "p", "1", "二"))
    assert make_deliverer(service).flush(NOW).sent == 2
    sent = fake.sent_messages()
    assert len(sent) == 2
    assert all(m["enable_duplicate_check"] == 1 and m["duplicate_check_interval"] == DUPLICATE_CHECK_S
               for m in sent)
    assert DUPLICATE_CHECK_S <= 4 * 3600  # WeCom's maximum
    assert stored_calls(service) == []


def test_the_fake_keeps_back_what_the_duplicate_check_catches(fake):
    api = WeComAPI(load_settings({"database_url": "sqlite://", "secret_key": "t", "wecom_corp_id": fake.corp_id,
                                  "wecom_secret": fake.secret, "wecom_agent_id": str(fake.agent_id),
                                  "wecom_api_base": fake.base_url}))
    body = {"touser": "a|b", "msgtype": "text", "agentid": fake.agent_id, "text": {"content": "同一条"},
            "enable_duplicate_check": 1, "duplicate_check_interval": 600}
    api.post("message/send", dict(body, touser="a"))
    assert api.post("message/send", body)["errcode"] == 0
    assert fake.received == {"a": ["同一条"], "b": ["同一条"]} and fake.duplicates["a"] == ["同一条"]
    api.post("message/send", dict(body, enable_duplicate_check=0))  # without the check: delivered again
    assert fake.received["a"] == ["同一条", "同一条"]


def test_an_answer_that_never_came_is_sent_again_and_seen_once(service, fake, db_url, redis_url):
    queue(service, ("wangfang", "p", "1", "请录入全勤率"), ("liuwei", "p", "1", "请录入全勤率"))
    fake.hold_next(path="message/send")  # WeCom delivers, the answer does not arrive in time
    first = Deliverer(service, WeComAPI(service.settings, None, timeout=1.0), None).flush(NOW)
    fake.release()
    assert first.sent == 0 and first.deferred == 2
    assert {r.status for r in rows(service)} == {"inflight"}  # not sent, not forgotten
    [call] = stored_calls(service)
    later = make_deliverer(service).flush(NOW + timedelta(hours=2))
    assert later.sent == 2
    sent = [c.body for c in fake.calls if c.path == "message/send"]
    assert len(sent) == 2 and sent[0] == sent[1]  # the same call, word for word, to the same people
    assert fake.received == {"wangfang": ["请录入全勤率"], "liuwei": ["请录入全勤率"]}
    assert {r.status for r in rows(service)} == {"sent"}
    assert {r.delivery_ref for r in rows(service)} == {call.ref}
    assert stored_calls(service) == []


def test_a_call_that_never_reached_wecom_is_delivered_by_the_next_flush(service, fake):
    queue(service, ("wangfang", "p", "1", "一"), ("wangfang", "q", "1", "二"))
    report = unreachable(service).flush(NOW)
    assert report.sent == 0 and fake.calls_to("message/send") == 0
    assert {r.status for r in rows(service)} == {"inflight"}
    # New rows for the same person do not change the message being made again.
    queue(service, ("wangfang", "r", "1", "三"))
    make_deliverer(service).flush(NOW + timedelta(hours=2))
    assert len(fake.received["wangfang"]) == 2
    assert "一" in fake.received["wangfang"][0] and "二" in fake.received["wangfang"][0]
    assert fake.received["wangfang"][1] == "三"
    assert {r.status for r in rows(service)} == {"sent"}


def test_an_unknown_call_too_old_for_the_duplicate_check_is_flagged_then_retried(service, fake):
    queue(service, ("wangfang", "p", "1", "一"))
    unreachable(service).flush(NOW)
    late = make_deliverer(service).flush(NOW + timedelta(hours=5))
    assert late.calls == 0 and fake.calls_to("message/send") == 0  # never a possible double
    [row] = rows(service)
    assert row.status == "failed" and "4 小时" in row.last_error
    assert stored_calls(service) == []
    with service.sessions() as session:
        assert retry_failed(session) == 1
    [row] = rows(service)
    assert row.status == "pending" and row.attempts == 0
    assert make_deliverer(service).flush(NOW + timedelta(hours=5)).sent == 1
    assert fake.received["wangfang"] == ["一"]


def test_nothing_is_marked_sent_without_a_channel_that_sent_it(clean_db, db_url):
    service = make_service(load_settings({"database_url": db_url, "secret_key": "t"}), clock=lambda: NOW)
    queue(service, ("wangfang", "p", "1", "给王芳"), ("chenjing", "p", "1", "给陈静"))
    # The scheduler of an install without WeCom: no one could see these, so they wait.
    assert make_deliverer(service).flush(NOW).calls == 0
    assert {r.status for r in rows(service)} == {"pending"}
    # A console chat shows the person's own pushes, marked as such; the others' still wait.
    out = io.StringIO()
    run_console(service, "wangfang", stdin=io.StringIO("帮助\n"), stdout=out)
    assert "【推送】\n给王芳" in out.getvalue() and "给陈静" not in out.getvalue()
    assert {r.recipient: r.status for r in rows(service)} == {"wangfang": "sent", "chenjing": "pending"}
    # `outbox flush` prints the rest to its terminal.
    printed = io.StringIO()
    assert make_deliverer(service, out=printed).flush(NOW).printed == 1
    assert "给陈静" in printed.getvalue()
    assert {r.status for r in rows(service)} == {"sent"}


def test_a_long_flush_keeps_its_rows_from_another_flusher(clean_db, db_url, redis_url, fake):
    service = make_service(wecom_settings(db_url, redis_url, fake, outbox_claim_seconds=3.0,  # the real clock
                                     outbox_concurrency=2))
    people = [f"t{i:02d}" for i in range(24)]
    queue(service, *[(p, "p", "1", f"给{p}") for p in people])
    fake.fail_next(24, delay=0.5, path="message/send")  # half a second each, two at a time: 6 s in all
    started = time.time()
    worker = threading.Thread(target=lambda: make_deliverer(service).flush())
    worker.start()
    while time.time() < started + 3.5:  # past the first flusher's original claim
        time.sleep(0.05)
    assert worker.is_alive() and fake.calls_to("message/send") < 24
    other = make_deliverer(service).flush()
    worker.join()
    assert other.calls == 0
    assert fake.calls_to("message/send") == 24
    assert all(fake.received[p] == [f"给{p}"] for p in people) and not fake.duplicates
    assert {r.status for r in rows(service)} == {"sent"}


def bot_env(db_url, redis_url, **more):
    """A `python -m bot` process's environment: the shell's minus our configuration, plus the test's."""
    foreign = ("WECOM_", "MP_", "REDIS_", "DATABASE_", "APP_", "FLASK_", "OUTBOX_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    env.update(DATABASE_URL=db_url, SECRET_KEY="test", **more)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def run_bot(args, env):
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_outbox_retry_requeues_failed_rows_from_the_command_line(service, fake, db_url, redis_url):
    fake.known_users = {"wangfang"}
    queue(service, ("ghost", "p", "1", "一"), ("ghost2", "p", "1", "二"), ("wangfang", "p", "1", "三"))
    make_deliverer(service).flush(NOW)
    failed = [r for r in rows(service) if r.status == "failed"]
    assert len(failed) == 2
    env = bot_env(db_url, redis_url)
    listed = run_bot(["outbox", "failed"], env)
    assert listed.returncode == 0 and "共 2 条发送失败" in listed.stdout
    one = run_bot(["outbox", "retry", "--id", str(failed[0].id)], env)
    assert one.returncode == 0, one.stderr
    assert "1 条" in one.stdout
    by_id = {r.id: r for r in rows(service)}
    assert by_id[failed[0].id].status == "pending" and by_id[failed[0].id].attempts == 0
    assert by_id[failed[1].id].status == "failed"
    rest = run_bot(["outbox", "retry"], env)
    assert rest.returncode == 0 and "1 条" in rest.stdout
    assert sorted(r.status for r in rows(service)) == ["pending", "pending", "sent"]


def test_a_flush_killed_after_wecom_took_the_call_is_seen_once(service, fake, db_url, redis_url):
    queue(service, ("wangfang", "weekend_reminders", "2025-W47", "请录入全勤率"),
          ("liuwei", "weekend_reminders", "2025-W47", "请录入全勤率"))
    env = bot_env(db_url, redis_url, OUTBOX_CLAIM_SECONDS="2", WECOM_CORP_ID=fake.corp_id,
                  WECOM_SECRET=fake.secret, WECOM_AGENT_ID=str(fake.agent_id), WECOM_TOKEN="tok",
                  WECOM_AES_KEY=AES_KEY, WECOM_API_BASE=fake.base_url)
    fake.hold_next(path="message/send")
    first = subprocess.Popen([sys.executable, "-m", "bot", "outbox", "flush"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert fake.wait_held(timeout=60), "the first flush never reached WeCom"
    finally:
        os.kill(first.pid, signal.SIGKILL)  # WeCom delivered; the sender dies before it hears so
        first.wait()
    fake.release()
    assert fake.received == {"wangfang": ["请录入全勤率"], "liuwei": ["请录入全勤率"]}
    assert {r.status for r in rows(service)} == {"inflight"}
    # A later flush, once the dead one's claim has lapsed, makes the same call again.
    for _ in range(10):
        time.sleep(2.2)
        second = run_bot(["outbox", "flush"], env)
        assert second.returncode == 0, second.stderr
        if fake.calls_to("message/send") >= 2:
            break
    assert fake.calls_to("message/send") == 2
    first_call, second_call = (c.body for c in fake.calls if c.path == "message/send")
    assert first_call == second_call and first_call["enable_duplicate_check"] == 1
    assert fake.received == {"wangfang": ["请录入全勤率"], "liuwei": ["请录入全勤率"]}  # once each
    assert {r.status for r in rows(service)} == {"sent"}
    assert stored_calls(service) == []
