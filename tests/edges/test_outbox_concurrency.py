"""The outbox with several WeCom calls in flight: each message once and each person's in order,
the per-member limits and the app's call rate held, an expired token refreshed once however many
calls saw it, and a flush killed with calls in flight losing nothing."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest
import redis

from bot.service import make_service
from core.config import ROOT
from models.outbox import enqueue
from scheduler.delivery import Deliverer, make_deliverer
from scheduler.sending import OUR_PER_MINUTE, RateLimiter
from tests.edges.test_outbox import NOW, TZ, queue, rows, stored_calls
from tests.edges.test_outbox_faults import AES_KEY, bot_env, run_bot, wecom_settings
from tests.fakes.fake_wecom import FakeWeCom
from wechat.wecom_api import WeComAPI, rate_buckets


@pytest.fixture
def fake():
    with FakeWeCom(latency=0.05) as server:
        yield server
        server.release()


@pytest.fixture
def service(clean_db, db_url, redis_url, fake):
    if redis_url:
        redis.Redis.from_url(redis_url).flushdb()
    return make_service(wecom_settings(db_url, redis_url, fake, outbox_concurrency=8), clock=lambda: NOW)


def cards(service, person, count):
    """`count` text cards to one person: never bundled, one call each."""
    with service.sessions() as session:
        for i in range(count):
            enqueue(session, person, f"card{i:02d}", "2025-W47", f"第{i:02d}张", msgtype="textcard",
                    title=f"卡片{i:02d}", url="https://example.com/c")
        session.commit()


def test_calls_in_flight_at_once_deliver_each_message_once_and_each_persons_in_order(service, fake):
    people = [f"s{i:03d}" for i in range(60)]
    queue(service, *[(p, "student_weekly_card", "2025-W47", f"{p} 的周报") for p in people])
    cards(service, "wangfang", 4)
    report = make_deliverer(service).flush(NOW)
    assert report.sent == 64 and report.calls == 64
    assert 1 < fake.max_in_flight <= 8  # several at once, never more than the setting
    assert all(fake.received[p] == [f"{p} 的周报"] for p in people)
    assert fake.received["wangfang"] == [f"卡片{i:02d}\n第{i:02d}张" for i in range(4)]  # one after another
    assert not fake.duplicates and not fake.dropped
    assert {r.status for r in rows(service)} == {"sent"}
    assert stored_calls(service) == []


def test_a_flush_claims_batch_after_batch_until_nothing_is_due(service, fake):
    queue(service, *[(f"s{i:03d}", "p", "1", f"给s{i:03d}") for i in range(25)])
    report = make_deliverer(service).flush(NOW, limit=10)
    assert report.sent == 25 and len(fake.received) == 25
    assert {r.status for r in rows(service)} == {"sent"}


def test_no_member_gets_more_than_our_limit_in_any_minute(service, fake, redis_url):
    cards(service, "wangfang", 25)
    first = make_deliverer(service).flush(NOW)
    assert first.sent == OUR_PER_MINUTE and first.deferred == 25 - OUR_PER_MINUTE
    # A minute later the minute before still holds 20: nothing yet (any 60 s holds at most 20).
    assert make_deliverer(service).flush(NOW + timedelta(seconds=61)).calls == 0
    assert make_deliverer(service).flush(NOW + timedelta(minutes=2)).sent == 25 - OUR_PER_MINUTE
    assert fake.received["wangfang"] == [f"卡片{i:02d}\n第{i:02d}张" for i in range(25)]
    assert not fake.dropped  # WeCom's own 30 a minute never reached
    # The window slides: 20 at the end of one clock minute leave none for the start of the next.
    limiter = RateLimiter(redis.Redis.from_url(redis_url) if redis_url else None)
    end = datetime(2025, 11, 21, 16, 0, 59, tzinfo=TZ).timestamp()
    assert all(limiter.allow("chenjing", end) for _ in range(OUR_PER_MINUTE))
    assert not limiter.allow("chenjing", end + 2)
    assert limiter.allow("chenjing", end + 62)


@pytest.mark.parametrize("per_minute", [2, 3, 7, 30, 60, 61, 62, 122, 600, 1000, 9000, 9999, 10_000, 20_000])
def test_no_60_seconds_can_hold_more_calls_than_the_cap(per_minute):
    span_ms, per_bucket = rate_buckets(per_minute)
    # A window of 60 s, wherever it starts, touches at most this many buckets.
    assert per_bucket >= 1 and (math.ceil(60_000 / span_ms) + 1) * per_bucket <= per_minute
    if per_minute >= 6100:
        assert per_bucket * 60_000 / span_ms >= 0.97 * per_minute  # and little of it is wasted


def test_two_flushers_share_the_apps_call_rate(clean_db, db_url, redis_url, fake):
    settings = wecom_settings(db_url, redis_url, fake, wecom_calls_per_minute=122, outbox_concurrency=4)
    if redis_url:
        redis.Redis.from_url(redis_url).flushdb()
    service = make_service(settings, clock=lambda: NOW)
    left, right = [f"l{i}" for i in range(5)], [f"r{i}" for i in range(5)]
    queue(service, *[(p, "p", "1", f"给{p}") for p in left + right])
    fake.latency = 0.0
    WeComAPI(settings, None).access_token()  # the token first: it is a call too

    def flusher(people):
        client = redis.Redis.from_url(redis_url) if redis_url else None
        Deliverer(service, WeComAPI(settings, client), None, client).flush(NOW, recipients=set(people))

    threads = [threading.Thread(target=flusher, args=(group,)) for group in (left, right)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(fake.received[p] == [f"给{p}"] for p in left + right)
    # 122 a minute is 2 a second: ten calls take at least four bucket changes, whoever makes them.
    sends = sorted(c.at for c in fake.calls if c.path == "message/send")
    assert len(sends) == 10 and sends[-1] - sends[0] > 2.5


def test_calls_that_all_see_an_expired_token_refresh_it_once(service, fake):
    queue(service, ("wangfang", "p", "0", "先取令牌"))
    make_deliverer(service).flush(NOW)
    assert fake.calls_to("gettoken") == 1
    people = [f"s{i:02d}" for i in range(16)]
    queue(service, *[(p, "p", "1", f"给{p}") for p in people])
    fake.expire_tokens()
    fake.latency = 0.2  # the first eight calls are all at WeCom when the first refusal comes back
    report = make_deliverer(service).flush(NOW + timedelta(minutes=1))
    assert report.sent == 16 and fake.max_in_flight > 1
    assert fake.calls_to("gettoken") == 2  # one refresh for every call that was refused
    assert all(fake.received[p] == [f"给{p}"] for p in people)


def test_a_flush_killed_with_calls_in_flight_loses_nothing_and_doubles_nothing(service, fake, db_url, redis_url):
    people = [f"s{i:02d}" for i in range(20)]
    queue(service, *[(p, "student_weekly_card", "2025-W47", f"{p} 的周报") for p in people])
    env = bot_env(db_url, redis_url, OUTBOX_CLAIM_SECONDS="2", OUTBOX_CONCURRENCY="4", WECOM_CORP_ID=fake.corp_id,
                  WECOM_SECRET=fake.secret, WECOM_AGENT_ID=str(fake.agent_id), WECOM_TOKEN="tok",
                  WECOM_AES_KEY=AES_KEY, WECOM_API_BASE=fake.base_url)
    fake.hold_next(4, path="message/send")  # four calls delivered, their answers never come back
    first = subprocess.Popen([sys.executable, "-m", "bot", "outbox", "flush"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(4):
            assert fake.wait_held(timeout=60), "the flush never had four calls at WeCom"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    fake.release()
    held = {p for p, got in fake.received.items() if got}
    assert len(held) == 4
    statuses = [r.status for r in rows(service)]
    assert "sent" not in statuses and statuses.count("inflight") >= 4  # four held, more stored and waiting
    for _ in range(15):  # later flushes, once the dead one's claim has lapsed, finish the job
        time.sleep(2.2)
        again = run_bot(["outbox", "flush"], env)
        assert again.returncode == 0, again.stderr
        if {r.status for r in rows(service)} == {"sent"}:
            break
    assert all(fake.received[p] == [f"{p} 的周报"] for p in people)  # each once
    assert set(fake.duplicates) == held  # the four held calls were made again; WeCom kept them back
    assert {r.status for r in rows(service)} == {"sent"}
    assert stored_calls(service) == []
