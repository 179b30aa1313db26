"""The scheduler as processes: one active even when started twice, a standby taking over, `jobs` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bot.cli import upgrade_database
from bot.config import ROOT
from models.schema import JobRun, OutboxMessage


def bot_env(db_url, **extra):
    env = dict(os.environ, DATABASE_URL=db_url, SECRET_KEY="t", SCHEDULER_HEARTBEAT_SECONDS="1",
               SCHEDULER_LEASE_SECONDS="3", OUTBOX_FLUSH_SECONDS="1", **extra)
    env.pop("REDIS_URL", None)
    return env


def heartbeats(engine):
    with Session(engine) as s:
        return [r.result.rsplit(":", 2)[1] for r in s.scalars(
            select(JobRun).where(JobRun.job == "heartbeat").order_by(JobRun.id))]


def wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_two_schedulers_one_active_and_the_standby_takes_over(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    upgrade_database(url)
    engine = create_engine(url)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    start = lambda log: subprocess.Popen([sys.executable, "-m", "bot", "scheduler"], cwd=ROOT,  # noqa: E731
                                         env=bot_env(url), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    first, second = start(logs[0]), start(logs[1])
    said = lambda: "\n".join(f"== {log.name}\n{log.read_text()[-3000:]}" for log in logs)  # noqa: E731
    try:
        assert wait_for(lambda: len(heartbeats(engine)) >= 4, 40)
        time.sleep(1)
        pids = set(heartbeats(engine))
        assert len(pids) == 1  # both started; only one ran the jobs
        active = first if str(first.pid) in pids else second
        standby = second if active is first else first
        os.kill(active.pid, signal.SIGKILL)
        active.wait()
        assert wait_for(lambda: str(standby.pid) in heartbeats(engine), 30), said()
        assert set(heartbeats(engine)) == {str(active.pid), str(standby.pid)}
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def run_bot(args, url):
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=bot_env(url),
                          capture_output=True, text=True, timeout=120)


def test_friday_reminder_from_the_command_line_sends_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade_database(url)
    # History up to the Wednesday: that week's Friday points are still missing on Friday.
    assert run_bot(["demo", "--today", "2026-11-25"], url).returncode == 0
    first = run_bot(["jobs", "run", "weekend_reminders", "--now", "2026-11-27T15:10"], url)
    assert first.returncode == 0, first.stderr
    assert "weekend_reminders: ok" in first.stdout
    engine = create_engine(url)
    with Session(engine) as s:
        queued = s.scalars(select(OutboxMessage)).all()
    assert queued and all(m.purpose == "weekend_reminders" for m in queued)
    again = run_bot(["jobs", "run", "weekend_reminders", "--now", "2026-11-27T15:10"], url)
    assert again.returncode == 0
    with Session(engine) as s:
        assert len(s.scalars(select(OutboxMessage)).all()) == len(queued)
    listed = run_bot(["jobs", "list"], url)
    assert "weekend_reminders" in listed.stdout and "ok" in listed.stdout
    flushed = run_bot(["outbox", "flush"], url)  # no WeCom configured: the console prints them
    assert "→" in flushed.stdout and f"printed {len(queued)}" in flushed.stdout
    assert "没有名为" in run_bot(["jobs", "run", "nope"], url).stderr
