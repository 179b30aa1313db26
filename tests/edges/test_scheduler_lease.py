"""The scheduler's fenced lease, in one process: generations, fenced commits, standing down when the
lease cannot be renewed, closing runs that died and catching up missed fire times.

The real processes (two schedulers, one killed mid-job) are in tests/edges/test_scheduler.py."""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text, update

import scheduler.jobs  # noqa: F401  (registers every job in JOBS)
from bot import service as runtime
from core.config import load_settings
from models.digest.recipients import PURPOSE
from models.schema import DigestState, JobRun, Lease, OutboxMessage
from scheduler.registry import JOBS
from scheduler.runner import (
    DIED,
    LEASE_LOST,
    SchedulerLease,
    catch_up,
    close_dead_runs,
    due_for_catch_up,
    run_job,
    run_scheduler,
)
from tests.edges.test_scheduler import wait_for
from tests.fakes.chat import make_service
from tests.fakes.factories import small_college

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = date(2025, 11, 24)
DIGEST_TIME = datetime(2025, 11, 24, 7, 50, tzinfo=TZ)  # Monday's digest, `mon 07:50`
TUESDAY_START = datetime(2025, 11, 25, 10, 0, tzinfo=TZ)
LEADERS = {"zhengyuan", "wujun", "qianmin"}  # the small college's 院领导 and 系部主任


@pytest.fixture
def college(session):
    small_college(session, with_calendar=True)
    return session


def lapse(session) -> None:
    """The holder stopped renewing (paused, or died) and its lease ran out."""
    session.execute(update(Lease).values(expires_at=datetime.now(TZ) - timedelta(minutes=1)))
    session.commit()


def add_run(session, job: str, as_of: datetime, status: str = "ok", host: str = "old-host:99:abcdef") -> None:
    session.add(JobRun(job=job, as_of=as_of, status=status, host=host,
                       finished_at=as_of if status != "running" else None))
    session.commit()


def digests(session) -> dict[str, list[str]]:
    session.expire_all()
    out: dict[str, list[str]] = {}
    for recipient, key in session.execute(select(OutboxMessage.recipient, OutboxMessage.period_key)
                                          .where(OutboxMessage.purpose == PURPOSE)):
        out.setdefault(recipient, []).append(key)
    return out


def runs_of(session, job: str) -> list[tuple[str, str | None]]:
    session.expire_all()
    return [(r.status, r.result) for r in session.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id))]


def test_every_takeover_raises_the_generation_and_a_renewal_keeps_it(clean_db, session, db_url, redis_url):
    service = make_service(db_url, MONDAY, redis_url)
    first, second = SchedulerLease(service, 30), SchedulerLease(service, 30)
    assert first.acquire() and first.generation == 1
    assert first.acquire() and first.generation == 1  # a renewal
    assert not second.acquire() and second.generation is None  # the first holds it
    lapse(session)
    assert second.acquire() and second.generation == 2  # a takeover
    assert not first.acquire()  # its renewal is refused: it stands down
    assert first.lost.is_set() and not first.held
    lapse(session)
    third = SchedulerLease(service, 30)
    assert third.acquire() and third.generation == 3
    assert session.scalar(select(Lease.holder)) == third.holder


def test_a_job_whose_lease_was_taken_over_commits_nothing(college, db_url, redis_url):
    session = college
    service = make_service(db_url, MONDAY, redis_url)
    paused = SchedulerLease(service, 30)
    assert paused.acquire()
    lapse(session)  # the active process stalled past its lease …
    standby = SchedulerLease(service, 30)
    assert standby.acquire()  # … and the standby took over
    assert paused.held  # by its own clock the stalled process still holds it

    run = run_job(service, "weekly_digest", DIGEST_TIME, lease=paused)
    assert (run.status, run.result) == ("error", LEASE_LOST)
    assert digests(session) == {}
    assert session.scalar(select(DigestState.id)) is None  # its other writes rolled back too
    assert paused.lost.is_set()  # and it stands down

    run = run_job(service, "weekly_digest", DIGEST_TIME, lease=standby)
    assert run.status == "ok", run.result
    assert {r: len(keys) for r, keys in digests(session).items()} == dict.fromkeys(LEADERS, 1)
    # `jobs run` by a person is not fenced, and a rerun sends nothing new.
    assert run_job(service, "weekly_digest", DIGEST_TIME).status == "ok"
    assert {r: len(keys) for r, keys in digests(session).items()} == dict.fromkeys(LEADERS, 1)


def test_a_digest_that_died_on_monday_is_closed_and_sent_at_tuesdays_start(college, db_url, redis_url):
    session = college
    add_run(session, "heartbeat", datetime(2025, 11, 3, 9, 0, tzinfo=TZ))  # the scheduler has run for weeks
    add_run(session, "weekly_digest", datetime(2025, 11, 17, 7, 50, tzinfo=TZ))  # last week's was sent
    for name in JOBS:
        if name != "weekly_digest":
            add_run(session, name, TUESDAY_START - timedelta(minutes=5))  # the others are up to date
    # Monday's run was under way when its scheduler was killed; a person's `jobs run` is still going.
    add_run(session, "weekly_digest", DIGEST_TIME, status="running", host="old-host:4242:0a1b2c")
    add_run(session, "risk_scan", TUESDAY_START, status="running", host="old-host:4300")

    service = make_service(db_url, TUESDAY_START.date(), redis_url)  # its clock reads Tuesday 10:00
    lease = SchedulerLease(service, 30)
    assert lease.acquire()
    closed = close_dead_runs(service, lease.holder)
    assert [r.job for r in closed] == ["weekly_digest"]
    assert runs_of(session, "weekly_digest")[-1] == ("error", DIED)
    assert runs_of(session, "risk_scan")[-1] == ("running", None)  # not a scheduler's: left alone

    assert due_for_catch_up(session, TUESDAY_START, TZ) == ["weekly_digest"]
    runs = catch_up(service, lease)
    assert [(r.job, r.status) for r in runs] == [("weekly_digest", "ok")]
    assert digests(session) == dict.fromkeys(LEADERS, ["2025-W47"])  # Monday's digest, sent late

    # Another takeover the same day: the digest ran, nothing is due; run again anyway, it sends once.
    assert due_for_catch_up(session, TUESDAY_START + timedelta(minutes=5), TZ) == []
    assert run_job(service, "weekly_digest", lease=lease).status == "ok"
    assert digests(session) == dict.fromkeys(LEADERS, ["2025-W47"])


def test_only_fire_times_since_the_scheduler_first_ran_are_caught_up(clean_db, session):
    assert due_for_catch_up(session, TUESDAY_START, TZ) == []  # a new install: nothing to catch up
    add_run(session, "heartbeat", datetime(2025, 11, 24, 9, 0, tzinfo=TZ))  # first started Monday 09:00
    due = due_for_catch_up(session, TUESDAY_START, TZ)
    assert "weekly_digest" not in due  # Monday 07:50 was before the first start
    assert "risk_scan" in due  # Tuesday 06:40 was not, and it never ran
    add_run(session, "risk_scan", datetime(2025, 11, 25, 6, 40, tzinfo=TZ), status="error")
    assert "risk_scan" in due_for_catch_up(session, TUESDAY_START, TZ)  # a failed run does not count
    add_run(session, "risk_scan", datetime(2025, 11, 25, 6, 41, tzinfo=TZ))
    assert "risk_scan" not in due_for_catch_up(session, TUESDAY_START, TZ)
    # In order of the fire times they missed.
    fires = {"task_deadlines": "08:20", "risk_scan": "06:40", "plan_documents": "08:50"}
    order = [name for name in due_for_catch_up(session, TUESDAY_START, TZ) if name in fires]
    assert order == sorted(order, key=fires.get)


@contextmanager
def lease_table_locked(engine, db_url):
    """Another transaction holds the lease row's table (SQLite: the database's write lock): the
    scheduler's renewals wait, as when the database is away or stalled."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE lease IN EXCLUSIVE MODE"))
            yield
            conn.rollback()
        return
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()




def test_a_scheduler_that_cannot_renew_stands_down_and_takes_the_lease_again_later(
        clean_db, session, db_url, redis_url, caplog):
    caplog.set_level(logging.INFO, logger="scheduler.runner")
    service = runtime.make_service(load_settings({"database_url": db_url, "redis_url": redis_url, "secret_key": "t"}))
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(service, stop, 2), daemon=True)

    def lease_row():
        session.expire_all()
        return session.execute(select(Lease.holder, Lease.generation)).one_or_none()

    def said(words: str) -> bool:
        return any(words in r.getMessage() for r in list(caplog.records))

    thread.start()
    try:
        assert wait_for(lambda: said("scheduler active as")), caplog.text
        first = lease_row()
        session.rollback()  # no transaction of ours in the way of the lock
        with lease_table_locked(clean_db, db_url):
            assert wait_for(lambda: said("standing down")), caplog.text
        assert wait_for(lambda: (row := lease_row()) is not None and row[1] > first[1]), caplog.text
        holder, generation = lease_row()
        assert holder != first[0] and holder.split(":")[:2] == first[0].split(":")[:2]  # this process, again
        assert said("waiting as a standby")
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
