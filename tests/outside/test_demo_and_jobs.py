"""The demo college and the jobs behind the scheduler, run by hand as a 管理员 would: `demo` (twice,
the second time `--skip-if-loaded`), `jobs run weekend_reminders --now <a Friday>`, `outbox flush`
(printed when WeCom is not configured, then nothing more), `jobs list`, and a flush to a WeCom that
refuses one member, whose message `outbox failed` then names. The tests run in order on one database."""

from __future__ import annotations

import re

import pytest

import scheduler.jobs  # noqa: F401  (registers the jobs)
from bot.cli.db import upgrade_database
from scheduler.registry import JOBS
from tests.edges.test_wecom import AES_KEY, TOKEN
from tests.fakes.fake_wecom import FakeWeCom
from tests.outside.conftest import ProcessEnv, bot, bot_env, ok, scalar

FRIDAY = "2025-11-21T15:10"  # the Friday after the demo's last day
NEXT_FRIDAY = "2025-11-28T15:10"
RECIPIENT = re.compile(r"^→ (\S+?)（(\w+)）：$", re.MULTILINE)


@pytest.fixture(scope="module")
def env(fresh_db: str) -> ProcessEnv:
    upgrade_database(fresh_db)  # `db upgrade` as a process is the set-up module's
    return bot_env(fresh_db)


@pytest.fixture(scope="module")
def reminded() -> list[str]:
    """The members the first weekend reminders went to (filled by the first test)."""
    return []


def test_demo_loads_once(env, db):
    loaded = ok(bot(env, "demo", "--today", "2025-11-19"))
    assert "已装入演示学院" in loaded and "240 名学生" in loaded, loaded
    assert scalar(db, "SELECT count(*) FROM student") == 240
    entries = scalar(db, "SELECT count(*) FROM score_entry")
    assert "数据库里已有学生" in ok(bot(env, "demo", "--skip-if-loaded"))
    assert scalar(db, "SELECT count(*) FROM score_entry") == entries


def test_weekend_reminders_are_flushed_once_and_listed(env, db, reminded):
    run = ok(bot(env, "jobs", "run", "weekend_reminders", "--now", FRIDAY))
    assert run.startswith("weekend_reminders: ok"), run
    queued = int(re.search(r"queued (\d+) reminders", run).group(1))
    assert queued > 0

    flushed = ok(bot(env, "outbox", "flush"))
    people = RECIPIENT.findall(flushed)
    assert len(people) == queued, flushed  # WeCom not configured: each message printed, one per member
    assert flushed.count("周末采分点还没有录完") == queued
    assert scalar(db, "SELECT count(*) FROM outbox_message WHERE status IN ('pending', 'sending')") == 0
    reminded.extend(userid for _, userid in people)

    again = ok(bot(env, "outbox", "flush"))
    assert RECIPIENT.findall(again) == [] and "周末采分点" not in again, again

    listed = ok(bot(env, "jobs", "list"))
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert set(JOBS) <= set(names), listed
    (line,) = [line for line in listed.splitlines() if line.startswith("weekend_reminders ")]
    assert "2025-11-21 15:10 ok" in line, line
    assert all("never run" in line for line in listed.splitlines() if line.startswith("weekly_digest "))


def test_a_member_wecom_refuses_is_listed_by_outbox_failed(env, reminded):
    assert reminded, "runs after the first flush"
    refused = min(reminded)
    run = ok(bot(env, "jobs", "run", "weekend_reminders", "--now", NEXT_FRIDAY))
    assert run.startswith("weekend_reminders: ok"), run
    with FakeWeCom(known_users=set(reminded) - {refused}) as fake:
        wecom = dict(WECOM_CORP_ID=fake.corp_id, WECOM_SECRET=fake.secret, WECOM_AGENT_ID=str(fake.agent_id),
                     WECOM_API_BASE=fake.base_url, WECOM_TOKEN=TOKEN, WECOM_AES_KEY=AES_KEY)
        flushed = bot(ProcessEnv(env, **wecom), "outbox", "flush")
        ok(flushed)
        delivered = {userid for userid, texts in fake.received.items() if texts}
    assert delivered == set(reminded) - {refused}, (delivered, flushed.stdout)
    assert all(len(fake.received[userid]) == 1 for userid in delivered)

    failed = ok(bot(env, "outbox", "failed"))
    (line,) = [line for line in failed.splitlines() if line.startswith("#")]
    assert f" {refused} weekend_reminder" in line and "无效的成员账号" in line, failed
    assert "共 1 条发送失败" in failed
