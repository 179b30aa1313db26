"""Faults with real processes (PRODUCT.md §6): a gunicorn worker killed mid-message, Redis killed
under load, PostgreSQL restarted under load. Each test starts what it kills and kills it by its own
pid; WeChat is simulated as it behaves: each message delivered by encrypted callback, an attempt
that is not answered 200 within 5 s retried, three attempts in all."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.db import Base, make_engine, make_sessionmaker
from models.schema import Department, ProcessedMessage, SchoolClass, ScoreEntry, Staff, Student
from tests.edges.test_wecom import AES_KEY, AGENT_ID, CORP_ID, TOKEN, WeComSender, text_xml
from tests.fakes.processes import PostgresCluster, gunicorn, postgres_bin, product_env, redis_server, wait_until

RECORDED = "已记录"
ATTEMPTS, ATTEMPT_TIMEOUT_S = 3, 5.0

on_postgres = pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
                                 reason="a production fault: runs in the PostgreSQL + Redis pass")


def teachers(session: Session, n: int) -> None:
    """`n` 班主任 (t000 …), each with a class of one student (学生000 …)."""
    dept = Department(name="信息工程系", head_staff_no=None)
    session.add(dept)
    session.flush()
    for i in range(n):
        staff = Staff(staff_no=f"T{i:03}", name=f"老师{i:03}", roles="班主任", department_id=dept.id,
                      wecom_userid=f"t{i:03}")
        session.add(staff)
        session.flush()
        cls = SchoolClass(code=f"C{i:03}", name=f"班级{i:03}", department_id=dept.id, grade="2023",
                          head_teacher_id=staff.id)
        session.add(cls)
        session.flush()
        session.add(Student(student_no=f"2023{i:06}", name=f"学生{i:03}", class_id=cls.id, wecom_userid=f"s{i:03}"))
    session.commit()


def web_env(db_url: str, redis_url: str | None) -> dict[str, str]:
    return product_env(DATABASE_URL=db_url, REDIS_URL=redis_url, SECRET_KEY="test", APP_ENV="production",
                       WECOM_CORP_ID=CORP_ID, WECOM_AGENT_ID=AGENT_ID, WECOM_SECRET="secret", WECOM_TOKEN=TOKEN,
                       WECOM_AES_KEY=AES_KEY, WECOM_API_BASE="http://127.0.0.1:1/cgi-bin/", WEB_CONCURRENCY="2")


@dataclass
class Delivery:
    """One message as WeChat delivers it: its attempts and what each got back."""

    msg_key: str  # the MsgId
    outcomes: list[str] = field(default_factory=list)  # reply text, or "<error: …>"

    @property
    def acknowledged(self) -> bool:
        """Some attempt was answered with a reply that says it was recorded."""
        return any(RECORDED in o for o in self.outcomes)

    @property
    def failed_attempts(self) -> int:
        return sum(o.startswith("<error") for o in self.outcomes)


class WeChat:
    """Delivers messages to our callback as WeChat does: the same encrypted message again when an
    attempt is not answered 200 within 5 s, three attempts in all."""

    def __init__(self, base: str) -> None:
        self.sender = WeComSender(base)

    def deliver(self, userid: str, content: str, msg_id: str) -> Delivery:
        params, body = self.sender.envelope(self.sender.encrypt(text_xml(userid, content, msg_id)))
        delivery = Delivery(msg_id)  # entries keep the MsgId as their source_msg
        for _ in range(ATTEMPTS):
            try:
                resp = requests.post(self.sender.url, params=params, data=body, timeout=ATTEMPT_TIMEOUT_S,
                                     headers={"Content-Type": "text/xml"})
            except requests.RequestException as exc:
                delivery.outcomes.append(f"<error: {type(exc).__name__}>")
                time.sleep(0.5)
                continue
            if resp.status_code != 200:
                delivery.outcomes.append(f"<error: HTTP {resp.status_code}>")
                time.sleep(0.5)
                continue
            delivery.outcomes.append(self.sender.reply_text(resp))
            break
        return delivery


_ids = iter(range(10**15, 10**16))


def msg_id() -> str:
    return str(next(_ids) + int(time.time() * 1000) % 10**9 * 1000)


def stored(engine) -> dict[str, int]:  # noqa: ANN001
    """Entries per source message key, and the processed-message rows."""
    with make_sessionmaker(engine)() as s:
        per_msg = dict(s.execute(select(ScoreEntry.source_msg, func.count()).group_by(ScoreEntry.source_msg)).all())
        per_msg["<processed>"] = s.scalar(select(func.count()).select_from(ProcessedMessage))
        return per_msg


def report(fault: str, deliveries: list[Delivery], counts: dict[str, int]) -> None:
    """The figures README's fault table quotes (shown with pytest -s)."""
    doubled = sum(n - 1 for key, n in counts.items() if key != "<processed>" and n > 1)
    print(f"\n[{fault}] deliveries {len(deliveries)}, distinct messages {len({d.msg_key for d in deliveries})}, "
          f"attempts {sum(len(d.outcomes) for d in deliveries)}, failed attempts "
          f"{sum(d.failed_attempts for d in deliveries)}, acknowledged {sum(d.acknowledged for d in deliveries)}, "
          f"stored {sum(n for k, n in counts.items() if k != '<processed>')}, doubled {doubled}")


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@on_postgres
def test_a_worker_killed_mid_message_leaves_every_message_recorded_once(db_url, redis_url, clean_db, session,
                                                                       tmp_path):
    """50 teachers send at once; while both workers hold recordings in flight (a lock held by the
    test keeps them there), one worker is SIGKILLed. WeChat's retries of its messages are handled
    (its claims lapse within seconds): every message recorded once, every sender hears back."""
    teachers(session, 50)
    with gunicorn(web_env(db_url, redis_url), tmp_path) as web:
        wechat = WeChat(web.base)
        blocker = psycopg.connect(libpq(db_url))
        blocker.execute("LOCK TABLE recording_batch IN EXCLUSIVE MODE")  # inserts wait behind it
        admin = psycopg.connect(libpq(db_url), autocommit=True)

        def workers_waiting() -> int:
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND wait_event_type = 'Lock'").fetchone()[0]

        before = web.workers()
        with ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(wechat.deliver, f"t{i:03}", f"全勤率 学生{i:03} {80 + i % 20}", msg_id())
                       for i in range(50)]
            try:
                wait_until(lambda: workers_waiting() >= 2, 60, "both workers holding a recording")
                victim = before[0]
                os.kill(victim, signal.SIGKILL)
            finally:
                blocker.rollback()
                blocker.close()
            deliveries = [f.result() for f in futures]
        wait_until(lambda: len(web.workers()) == 2, 60, "gunicorn replacing the killed worker")
        assert victim not in web.workers()
        admin.close()

    counts = stored(clean_db)
    report("worker SIGKILL", deliveries, counts)
    interrupted = [d for d in deliveries if d.failed_attempts]
    assert interrupted, "the kill interrupted no message in flight"
    assert all(d.acknowledged for d in deliveries), [d.outcomes for d in deliveries if not d.acknowledged]
    assert counts.pop("<processed>") == 50
    assert counts == {d.msg_key: 1 for d in deliveries}


def test_redis_killed_under_load_the_service_answers_on_and_doubles_nothing(db_url, clean_db, session, tmp_path):
    """Each of 40 messages delivered twice at once (a retry racing the original) while the
    service's own Redis is SIGKILLed mid-stream: every delivery answered 200, every message
    recorded once (the database's unique key dedupes without Redis), both copies of a message get
    the same answer, and the health check says Redis is gone while the database is fine."""
    teachers(session, 40)
    with redis_server(tmp_path) as (redis_proc, redis_url), gunicorn(web_env(db_url, redis_url), tmp_path) as web:
        wechat = WeChat(web.base)
        jobs = []
        for i in range(40):
            job = (f"t{i:03}", f"全勤率 学生{i:03} {70 + i % 30}", msg_id())
            jobs += [job, job]
        answered = threading.Semaphore(0)

        def deliver(job: tuple[str, str, str]) -> Delivery:
            try:
                return wechat.deliver(*job)
            finally:
                answered.release()

        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(deliver, job) for job in jobs]
            for _ in range(20):
                answered.acquire(timeout=60)
            os.kill(redis_proc.pid, signal.SIGKILL)
            redis_proc.wait(10)
            deliveries = [f.result() for f in futures]
        health = requests.get(web.base + "/healthz", timeout=10)

    counts = stored(clean_db)
    report("Redis SIGKILL", deliveries, counts)
    assert all(d.outcomes and not d.failed_attempts for d in deliveries), [d.outcomes for d in deliveries]
    assert all(d.acknowledged for d in deliveries), [d.outcomes for d in deliveries if not d.acknowledged]
    by_key: dict[str, set[str]] = {}
    for d in deliveries:
        by_key.setdefault(d.msg_key, set()).add(d.outcomes[-1])
    assert all(len(replies) == 1 for replies in by_key.values()), by_key
    assert counts.pop("<processed>") == 40
    assert counts == {key: 1 for key in by_key}
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok", "redis": "absent"}


@on_postgres
@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL's initdb is not installed")
def test_postgres_restarted_under_load_no_false_acknowledgement_and_recovery_by_itself(redis_url, tmp_path):
    """Three teachers send steadily while a private PostgreSQL cluster is stopped as a crash would
    (immediate) and started again. No reply says 已记录 for anything not stored, nothing is
    stored twice, /healthz says 503 while the database is away, and afterwards the same gunicorn
    (not restarted) records every message again."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        with psycopg.connect(libpq(cluster.url()), autocommit=True) as conn:
            conn.execute("CREATE DATABASE czk")
        engine = make_engine(cluster.url("czk"))
        Base.metadata.create_all(engine)
        with make_sessionmaker(engine)() as s:
            teachers(s, 3)
        engine.dispose()
        with gunicorn(web_env(cluster.url("czk"), redis_url), tmp_path) as web:
            wechat = WeChat(web.base)
            deliveries: list[Delivery] = []
            stop_sending = threading.Event()

            def teacher(i: int) -> None:
                n = 0
                while not stop_sending.is_set():
                    deliveries.append(wechat.deliver(f"t{i:03}", f"全勤率 学生{i:03} {60 + n % 40}", msg_id()))
                    n += 1

            with ThreadPoolExecutor(3) as pool:
                senders = [pool.submit(teacher, i) for i in range(3)]
                wait_until(lambda: sum(d.acknowledged for d in deliveries) >= 30, 60, "30 recordings before")
                cluster.stop("immediate")
                down = requests.get(web.base + "/healthz", timeout=10)
                wait_until(lambda: len(deliveries) >= 45, 60, "messages answered while PostgreSQL is away")
                cluster.start()
                restarted_at = len(deliveries)
                wait_until(lambda: sum(d.acknowledged for d in deliveries[restarted_at:]) >= 30, 90,
                           "30 recordings after the restart")
                stop_sending.set()
                for s in senders:
                    s.result()
            after = [requests.get(web.base + "/healthz", timeout=10).status_code for _ in range(3)]
        engine = make_engine(cluster.url("czk"))
        counts = stored(engine)
        engine.dispose()
    finally:
        cluster.close()

    report("PostgreSQL restart", deliveries, counts)
    assert down.status_code == 503 and down.json()["database"] == "error"
    assert after == [200, 200, 200]
    processed = counts.pop("<processed>")
    acknowledged = {d.msg_key for d in deliveries if d.acknowledged}
    refused = [d for d in deliveries if not d.acknowledged]
    assert refused, "no message met the database away"
    assert all(counts.get(key) == 1 for key in acknowledged), "a reply said 已记录 for something not stored"
    assert all(n == 1 for n in counts.values())  # nothing stored twice
    assert set(counts) <= {d.msg_key for d in deliveries}
    assert processed == len(counts)
    # What was not acknowledged was answered with the apology that says nothing was recorded.
    assert all("没有记录" in d.outcomes[-1] or d.outcomes[-1].startswith("<error") for d in refused)
    assert all(d.acknowledged for d in deliveries[-10:])


def test_the_process_helpers_kill_only_what_they_started(tmp_path: Path):
    """A private redis-server is gone after its block, and the machine's own Redis (if any) is not."""
    with redis_server(tmp_path) as (proc, _url):
        assert proc.poll() is None
    assert proc.poll() is not None
