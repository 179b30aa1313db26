"""`/healthz` and `/metrics` under gunicorn with 4 workers, as production runs it: messages answered
by different workers are counted once each in every scrape, whichever worker answers it (and still
after a worker is killed and replaced); METRICS_TOKEN guards /metrics, not /healthz."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from glob import glob

import requests
from prometheus_client.parser import text_string_to_metric_families

from bot.cli.db import upgrade_database
from models.db import make_engine, make_sessionmaker
from tests.edges.test_wecom import SAMPLE, WeComSender, text_xml
from tests.fakes.factories import small_college
from tests.fakes.processes import gunicorn, wait_until
from tests.outside.conftest import bot_env

WECOM = dict(WECOM_CORP_ID=SAMPLE["corp_id"], WECOM_TOKEN=SAMPLE["token"], WECOM_AES_KEY=SAMPLE["aes_key"],
             WECOM_AGENT_ID="1000002", WECOM_SECRET="secret", WECOM_API_BASE="http://127.0.0.1:1/cgi-bin/")
TOKEN = "metrics-token-for-the-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def counted(base: str) -> tuple[float, float]:
    """(messages counted, callbacks timed) for the WeCom channel, as one scrape reports them."""
    resp = requests.get(base + "/metrics", headers=AUTH, timeout=10)
    assert resp.status_code == 200, resp.text
    messages = callbacks = 0.0
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "czk_messages_total" and s.labels.get("channel") == "wecom":
                messages += s.value
            if s.name == "czk_callback_duration_seconds_count" and s.labels.get("channel") == "wecom":
                callbacks += s.value
    return messages, callbacks


def test_metrics_sum_every_worker_under_gunicorn(fresh_db, tmp_path):
    upgrade_database(fresh_db)
    engine = make_engine(fresh_db)
    with make_sessionmaker(engine)() as session:
        small_college(session)
    engine.dispose()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier run")  # emptied on start
    env = bot_env(fresh_db, APP_ENV="production", METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                  **WECOM)
    with gunicorn(env, tmp_path, workers=4) as server:
        health = requests.get(server.base + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["database"] == "ok"
        assert requests.get(server.base + "/metrics", timeout=10).status_code == 401
        assert requests.get(server.base + "/metrics", headers={"Authorization": "Bearer no"},
                            timeout=10).status_code == 401

        wecom = WeComSender(server.base, SAMPLE["token"], SAMPLE["aes_key"], SAMPLE["corp_id"])

        def ask(_: int) -> str:
            return wecom.reply_text(wecom.post(text_xml("wangfang", "储值卡 张三")))

        def workers_that_answered() -> set[str]:
            return {os.path.basename(p).rsplit("_", 1)[1] for p in glob(str(metrics_dir / "counter_*.db"))}

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # Concurrent callbacks spread over the workers; go on until at least two have answered.
            while sent == 0 or (len(workers_that_answered()) < 2 and sent < 400):
                replies = list(pool.map(ask, range(16)))
                assert all("张三" in r for r in replies), replies[:2]
                sent += len(replies)
        assert len(workers_that_answered()) >= 2, "every callback went to one worker"

        # Every scrape, whichever worker answers it, counts every message once.
        for _ in range(8):
            assert counted(server.base) == (sent, sent)

        # A worker killed and replaced: what it counted still counts.
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in server.workers() and len(server.workers()) == 4, 60,
                   "the killed worker replaced")
        assert ask(0)
        for _ in range(4):
            assert counted(server.base) == (sent + 1, sent + 1)
    assert "counter_999999" not in " ".join(os.listdir(metrics_dir))
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
