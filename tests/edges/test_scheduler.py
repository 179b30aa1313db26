"""The scheduler as processes: one active even when started twice, a standby taking over (also when
the active one is killed in the middle of a job), and the `jobs` commands."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

import scheduler.jobs  # noqa: F401  (registers every job in JOBS)
from bot.cli.db import upgrade_database
from core.config import ROOT
from models.digest.recipients import PURPOSE, recipients
from models.io.demo import load_demo
from models.schema import JobRun, Lease, OutboxMessage
from scheduler.registry import JOBS
from scheduler.runner import DIED

TZ = ZoneInfo("Asia/Shanghai")


def bot_env(db_url, **extra):
    env = dict(os.environ, DATABASE_URL=db_url, SECRET_KEY="t", SCHEDULER_HEARTBEAT_SECONDS="1",
               SCHEDULER_LEASE_SECONDS="3", OUTBOX_FLUSH_SECONDS="1")
    env.update(extra)
    env.pop("REDIS_URL", None)
    return env


def heartbeats(engine):
    with Session(engine) as s:
        return [r.result.rsplit(":", 2)[1] for r in s.scalars(
            select(JobRun).where(JobRun.job == "heartbeat").order_by(JobRun.id))]


def wait_for(predicate, seconds=90):
    """Poll for a condition with a generous deadline (the machine is shared and noisy)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


class SchedulerProcess:
    """`python -m bot scheduler`, started as a user starts it, its output in a log file."""

    def __init__(self, url, log, **env):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "bot", "scheduler"], cwd=ROOT,
                                     env=bot_env(url, **env), stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def said(self, words):
        return words in self.log.read_text(errors="replace")

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)  # our own child, by its pid
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def two_schedulers(url, tmp_path, **env):
    procs = [SchedulerProcess(url, tmp_path / f"scheduler{i}.log", **env) for i in (1, 2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def logs(procs):
    return "\n".join(f"== {p.log.name} (pid {p.pid})\n{p.log.read_text(errors='replace')[-4000:]}" for p in procs)


def lease(engine):
    """(pid of the lease holder, generation), or (None, 0)."""
    with Session(engine) as s:
        row = s.execute(select(Lease.holder, Lease.generation)).one_or_none()
    return (int(row[0].split(":")[1]), row[1]) if row else (None, 0)


def test_two_schedulers_started_one_is_active_the_other_waits_and_takes_over(clean_db, db_url, tmp_path):
    with two_schedulers(db_url, tmp_path, SCHEDULER_LEASE_SECONDS="5") as procs:
        assert wait_for(lambda: lease(clean_db)[0] in {p.pid for p in procs}), logs(procs)
        active = next(p for p in procs if p.pid == lease(clean_db)[0])
        standby = next(p for p in procs if p is not active)
        assert wait_for(lambda: active.said("scheduler active as") and standby.said("waiting as a standby")
                        and len(heartbeats(clean_db)) >= 3), logs(procs)
        assert set(heartbeats(clean_db)) == {str(active.pid)}  # both started; only one runs the schedule
        assert not standby.said("scheduler active")
        generation = lease(clean_db)[1]

        active.kill()
        assert wait_for(lambda: lease(clean_db) == (standby.pid, generation + 1)), logs(procs)
        assert wait_for(lambda: str(standby.pid) in heartbeats(clean_db)), logs(procs)
        assert standby.said("scheduler active as")


@contextmanager
def digest_blocked(engine, db_url):
    """Hold the first weekly_digest run in the middle of its work, with its run recorded as running:
    PostgreSQL: a transaction of ours holds the outbox table, so its first insert waits for us;
    SQLite (one writer for the whole file, so a lock of ours would also stop the run from being
    recorded): a trigger keeps the first run's first outbox insert busy until its process dies.
    Yields `release`."""
    if engine.dialect.name == "postgresql":
        conn = engine.connect()
        conn.execute(text("LOCK TABLE outbox_message IN EXCLUSIVE MODE"))
        try:
            yield conn.rollback
        finally:
            conn.rollback()
            conn.close()
        return
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
    conn.execute("CREATE TABLE spin (x INTEGER)")
    conn.executemany("INSERT INTO spin VALUES (?)", [(i,) for i in range(2000)])
    conn.execute("CREATE TRIGGER stall_first_digest AFTER INSERT ON outbox_message "
                 "WHEN (SELECT count(*) FROM job_run WHERE job = 'weekly_digest') = 1 "
                 "BEGIN SELECT count(*) FROM spin a, spin b, spin c; END")
    try:
        yield lambda: None  # the first run's process is gone; later runs are not held
    finally:
        conn.execute("DROP TRIGGER stall_first_digest")
        conn.execute("DROP TABLE spin")
        conn.close()


def digest_runs(engine):
    with Session(engine) as s:
        return [(r.status, r.result, r.host) for r in s.scalars(
            select(JobRun).where(JobRun.job == "weekly_digest").order_by(JobRun.id))]


def test_a_scheduler_killed_mid_job_the_standby_catches_up_and_nothing_is_sent_twice(
        clean_db, session, db_url, catalogue, tmp_path):
    now = datetime.now(TZ)
    load_demo(session, catalogue, now.date(), tz=TZ)
    # The scheduler has run here for weeks and every job is up to date, except this week's digest:
    # no scheduler was up on Monday morning. The first scheduler to start catches it up.
    session.add(JobRun(job="heartbeat", as_of=now - timedelta(days=8), status="ok", host="old:1:abcdef"))
    session.add_all(JobRun(job=name, as_of=now, status="ok", host="old:1:abcdef")
                    for name in JOBS if name != "weekly_digest")
    session.commit()
    leaders = {r.userid for r in recipients(session) if r.userid}
    session.rollback()
    assert len(leaders) >= 2

    with digest_blocked(clean_db, db_url) as release, two_schedulers(db_url, tmp_path) as procs:
        assert wait_for(lambda: digest_runs(clean_db)[:1] != []), logs(procs)
        status, _, host = digest_runs(clean_db)[0]
        assert status == "running"
        active = next(p for p in procs if p.pid == int(host.split(":")[1]))
        standby = next(p for p in procs if p is not active)
        generation = lease(clean_db)[1]

        active.kill()  # in the middle of the digest
        release()
        assert wait_for(lambda: lease(clean_db)[0] == standby.pid), logs(procs)
        assert lease(clean_db)[1] > generation
        assert wait_for(lambda: [r[0] for r in digest_runs(clean_db)] == ["error", "ok"]), logs(procs)
        assert digest_runs(clean_db)[0][1] == DIED  # the killed run, closed as failed
        assert standby.said("catching up weekly_digest")

    with Session(clean_db) as s:
        rows = s.execute(select(OutboxMessage.recipient, OutboxMessage.period_key)
                         .where(OutboxMessage.purpose == PURPOSE)).all()
    assert {r for r, _ in rows} == leaders
    assert len(rows) == len(set(rows))  # each recipient's digest (or each part of it) once
    assert len({k.split("-")[0] + k.split("-")[1] for _, k in rows}) == 1  # one week's digest


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
