"""`GET /metrics` as a Prometheus server scrapes it (one process; tests/outside/test_metrics_gunicorn.py
checks the sum across gunicorn's workers): callback latency by channel, messages by channel and
outcome, outbox rows by state and the oldest waiting row's age, delivery errors by errcode, each
job's last success; METRICS_TOKEN; the one log line per message."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bot import create_app
from core.metrics import delivery_error
from models.outbox import enqueue
from models.schema import JobRun
from tests.edges.test_wecom import WeComSender, image_xml, live_server, new_msg_id, text_xml, wecom_settings
from tests.fakes.factories import small_college


def scrape(base: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) → value."""
    resp = requests.get(base + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(db_url, today, redis_url, session):
    small_college(session)
    settings = wecom_settings(db_url, redis_url)
    with live_server(settings, today) as base:
        yield base, WeComSender(base, settings.wecom_token, settings.wecom_aes_key, settings.wecom_corp_id)


def test_metrics_count_what_the_callback_did(server, session, caplog):
    base, wecom = server
    before = scrape(base)
    caplog.set_level(logging.INFO, logger="bot.pipeline")

    assert "已记录 1 条" in wecom.reply_text(wecom.post(text_xml("wangfang", "全勤率 张三 95")))
    assert "找不到" in wecom.reply_text(wecom.post(text_xml("wangfang", "全勤率 不在名册 95")))
    wecom.reply_text(wecom.post(text_xml("zhangsan", "撤销")))  # a student may not undo
    wecom.reply_text(wecom.post(text_xml("stranger01", "储值卡")))  # not on the roster
    wecom.reply_text(wecom.post(image_xml("wangfang")))
    again = text_xml("wangfang", "储值卡 李四", msg_id=new_msg_id())
    first = wecom.reply_text(wecom.post(again))
    assert wecom.reply_text(wecom.post(again)) == first  # WeCom's retry: answered from the stored reply

    after = scrape(base)

    def delta(outcome: str) -> float:
        return (value(after, "czk_messages_total", channel="wecom", outcome=outcome)
                - value(before, "czk_messages_total", channel="wecom", outcome=outcome))

    assert {o: delta(o) for o in ("ok", "bad-input", "refused", "duplicate", "error")} == \
        {"ok": 2, "bad-input": 2, "refused": 2, "duplicate": 1, "error": 0}
    calls = (value(after, "czk_callback_duration_seconds_count", channel="wecom")
             - value(before, "czk_callback_duration_seconds_count", channel="wecom"))
    assert calls == 7
    assert value(after, "czk_callback_duration_seconds_bucket", channel="wecom", le="+Inf") == \
        value(after, "czk_callback_duration_seconds_count", channel="wecom")

    # One structured line per message: channel, key, command, outcome, ms; no text, no person.
    lines = [r.getMessage() for r in caplog.records
             if r.name == "bot.pipeline" and r.getMessage().startswith("message ")]
    assert len(lines) == 7, lines
    assert any("command=fallback outcome=ok" in line for line in lines)
    assert any("command=撤销 outcome=refused" in line for line in lines)
    assert any("command=unknown-sender outcome=refused" in line for line in lines)
    assert any("outcome=duplicate" in line for line in lines)
    for line in lines:
        assert line.startswith("message channel=wecom key=wecom:") and " ms=" in line, line
        for private in ("张三", "李四", "不在名册", "wangfang", "zhangsan", "stranger01", "95"):
            assert private not in line.split(" key=")[0] + line.split(" command=")[1], (private, line)


def test_metrics_read_the_outbox_jobs_and_delivery_errors(server, session, redis_url):
    base, _wecom = server
    old = enqueue(session, "lisi", "weekly_card", "2025-W46", "一周储值卡")
    enqueue(session, "wangwu", "weekly_card", "2025-W46", "一周储值卡")
    failed = enqueue(session, "zhaoliu", "weekly_card", "2025-W46", "一周储值卡")
    session.flush()
    old.created_at = datetime.now(UTC) - timedelta(hours=2)
    failed.status = "failed"
    finished = datetime(2025, 11, 18, 6, 41, tzinfo=ZoneInfo("Asia/Shanghai"))  # as run_job writes it
    session.add_all([
        JobRun(job="risk_scan", as_of=finished, finished_at=finished, status="ok", result="x"),
        JobRun(job="risk_scan", as_of=finished + timedelta(days=1), finished_at=finished + timedelta(days=1),
               status="error", result="error: DataError/22003"),
        JobRun(job="weekly_digest", as_of=finished, status="running"),
    ])
    session.commit()
    before = scrape(base)
    # As delivery (scheduler/delivery.py) counts a failed WeCom call: in Redis when the service has it
    # (the scheduler is another process), else in this process, which is the server's.
    delivery_error(redis_url, 45009)
    delivery_error(redis_url, 45009)
    delivery_error(redis_url, None)
    after = scrape(base)

    assert value(after, "czk_outbox_messages", state="pending") == 2
    assert value(after, "czk_outbox_messages", state="failed") == 1
    assert value(after, "czk_outbox_messages", state="sent") == 0
    assert value(after, "czk_outbox_oldest_waiting_age_seconds") >= 2 * 3600 - 60
    assert value(after, "czk_job_last_success_timestamp_seconds", job="risk_scan") == finished.timestamp()
    assert ("czk_job_last_success_timestamp_seconds", (("job", "weekly_digest"),)) not in after  # never succeeded
    assert value(after, "czk_metrics_database_up") == 1
    assert value(after, "czk_delivery_errors_total", errcode="45009") - \
        value(before, "czk_delivery_errors_total", errcode="45009") == 2
    assert value(after, "czk_delivery_errors_total", errcode="none") - \
        value(before, "czk_delivery_errors_total", errcode="none") == 1
    # Labels name states, jobs and codes; no recipient appears anywhere.
    text = requests.get(base + "/metrics", timeout=10).text
    assert not any(person in text for person in ("lisi", "wangwu", "zhaoliu", "一周储值卡"))


def test_metrics_token_is_required_when_set(db_url, today, redis_url):
    settings = wecom_settings(db_url, redis_url, metrics_token="s3cret-metrics")
    client = create_app(settings).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "s3cret-metrics"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics"})
    assert ok.status_code == 200 and b"czk_outbox_messages" in ok.data
    assert client.get("/healthz").status_code == 200  # health stays open for the load balancer
    client.application.extensions["czk"].engine.dispose()


def test_metrics_answer_while_the_database_is_away(tmp_path):
    settings = wecom_settings(f"sqlite:///{tmp_path / 'missing' / 'nothing.db'}", None)
    client = create_app(settings).test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert b"czk_metrics_database_up 0.0" in resp.data
    assert b"# TYPE czk_messages_total counter" in resp.data or b"# TYPE czk_messages counter" in resp.data
    assert client.get("/healthz").status_code == 503

