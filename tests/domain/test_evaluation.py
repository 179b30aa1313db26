"""The early-warning check after a recording: queued with the recording, evaluated right after it
outside the callback (at once, on the web worker's thread, or by the scheduler), never twice; and
the one-statement recording path on PostgreSQL (atomic, same audit rows, survives a dropped
connection, and recordings committed together from many threads each keep their own rows)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from datetime import time as clock_time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from bot import service as runtime
from core.config import load_settings
from models.db import StatementConnections, make_sessionmaker, savepoint
from models.periods import place
from models.risk.notices import NoNotifier
from models.schema import (
    AuditLog,
    Department,
    OutboxMessage,
    ProcessedMessage,
    RecordingBatch,
    RiskEvaluationQueue,
    RiskWarning,
    ScoreEntry,
    Student,
)
from models.scores import FIRST_ID, PlannedEntry, Processed, load_calendar, record_entries
from models.service import Service
from scheduler.runner import _flush_outbox
from tests.fakes.chat import make_service, say

TODAY = datetime(2025, 11, 19).date()


def count(session, table) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(table))


def open_warnings(session) -> list[tuple[str, str, str]]:
    session.expire_all()
    rows = session.execute(select(Student.name, RiskWarning.category, RiskWarning.level)
                           .join(Student, Student.id == RiskWarning.student_id)
                           .where(RiskWarning.status == "open").order_by(RiskWarning.id))
    return [tuple(r) for r in rows]


def planned(session, catalogue, name: str, code: str, value: float) -> PlannedEntry:
    point = catalogue.by_code[code]
    at = place(point.period, TODAY, load_calendar(session))
    student = session.scalar(select(Student).where(Student.name == name))
    return PlannedEntry(point, student.id, None, name, value, at.occurred_on, at.period_key, at.semester_key)


def test_a_value_that_could_trip_a_rule_is_evaluated_right_after_the_reply(college, session, db_url, redis_url):
    svc = make_service(db_url, TODAY, redis_url)
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 100")  # on the safe side of every line
    assert count(session, RiskEvaluationQueue) == 0 and open_warnings(session) == []
    assert "已记录" in say(svc, "sunli", "违纪频次 张三")
    assert open_warnings(session) == [("张三", "违纪", "关注")]
    assert count(session, RiskEvaluationQueue) == 0
    assert {m.recipient for m in session.scalars(select(OutboxMessage))} == {"wangfang", "liuwei"}


def test_a_service_without_a_notifier_fails_loudly_and_keeps_the_recording_queued(college, session, db_url,
                                                                                   redis_url, monkeypatch):
    """A warning with something to say and no words to say it in: an error, not a silent drop."""
    svc = make_service(db_url, TODAY, redis_url)
    monkeypatch.setattr(svc.evaluator, "recorded", lambda: None)  # leave the recording queued
    assert "已记录" in say(svc, "sunli", "违纪频次 张三")
    assert count(session, RiskEvaluationQueue) == 1
    bare = Service(svc.settings, clock=svc.now)  # built without make_service: no notifier
    with pytest.raises(NoNotifier):
        bare.evaluate_queued()
    assert count(session, RiskEvaluationQueue) == 1 and open_warnings(session) == []
    assert svc.evaluate_queued().recordings == 1
    assert open_warnings(session) == [("张三", "违纪", "关注")] and count(session, RiskEvaluationQueue) == 0


def test_on_the_web_worker_the_check_runs_on_its_own_thread_soon_after(college, session, db_url, redis_url):
    settings = load_settings({"database_url": db_url, "redis_url": redis_url, "secret_key": "test"})
    svc = runtime.make_service(settings, clock=lambda: datetime.combine(TODAY, clock_time(10, 0), svc.tz),
                               background=True)
    assert "已记录" in say(svc, "sunli", "违纪频次 张三")
    deadline = time.monotonic() + 20
    while not open_warnings(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_warnings(session) == [("张三", "违纪", "关注")]
    assert count(session, RiskEvaluationQueue) == 0


def test_a_queued_recording_no_worker_got_to_is_evaluated_by_the_scheduler_once(college, session, catalogue,
                                                                                db_url, redis_url):
    # As if the web worker had stopped between its reply and its check: the queue row is all there is.
    record_entries(session, "孙丽(sunli)", None, [planned(session, catalogue, "张三", "B13", 1.0)],
                   text="违纪频次 张三", evaluate=True)
    session.commit()
    assert count(session, RiskEvaluationQueue) == 1 and open_warnings(session) == []
    svc = make_service(db_url, TODAY, redis_url)
    _flush_outbox(svc)
    assert open_warnings(session) == [("张三", "违纪", "关注")]
    queued = count(session, OutboxMessage)
    _flush_outbox(svc)  # nothing left to evaluate, nothing queued twice
    assert count(session, RiskEvaluationQueue) == 0 and count(session, OutboxMessage) == queued


@pytest.fixture
def pg_service(college, db_url, redis_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("the one-statement recording is PostgreSQL's")
    return make_service(db_url, TODAY, redis_url)


def test_one_statement_recording_writes_what_the_session_path_writes(pg_service, session, catalogue):
    """Replacing 80 (session path) by 95 (one statement) by 90 (session path): the same audit rows."""
    entry = planned(session, catalogue, "张三", "A03", 80.0)
    record_entries(session, "王芳(wangfang)", None, [entry], text="全勤率 张三 80")
    session.commit()
    replacing = planned(session, catalogue, "张三", "A03", 95.0)
    second = pg_service.recordings.record("王芳(wangfang)", None, [replacing],
                            text="全勤率 张三 95", source="wecom", source_msg="m2",
                            processed=Processed("wecom:m2", "wangfang", f"已记录 #{FIRST_ID}"))
    record_entries(session, "王芳(wangfang)", None, [planned(session, catalogue, "张三", "A03", 90.0)],
                   text="全勤率 张三 90")
    session.commit()
    session.expire_all()
    ids = list(session.scalars(select(ScoreEntry.id).order_by(ScoreEntry.id)))
    audits = [(a.entity_key, a.old_value, a.new_value) for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    key = audits[0][0]
    assert audits == [
        (key, None, json.dumps({"entry": ids[0], "value": 80.0})),
        (key, json.dumps({"entry": ids[0], "value": 80.0}), json.dumps({"entry": ids[1], "value": 95.0})),
        (key, json.dumps({"entry": ids[1], "value": 95.0}), json.dumps({"entry": ids[2], "value": 90.0})),
    ]
    assert second.entry_ids == [ids[1]]
    reply = session.scalar(select(ProcessedMessage.reply).where(ProcessedMessage.msg_key == "wecom:m2"))
    assert reply == f"已记录 #{ids[1]}"
    batch = session.get(RecordingBatch, second.batch_id)
    assert (batch.source, batch.source_msg, batch.text) == ("wecom", "m2", "全勤率 张三 95")


def test_one_statement_recording_is_all_or_nothing(pg_service, session, catalogue):
    entries = [planned(session, catalogue, "张三", "A03", 95.0), planned(session, catalogue, "李四", "A03", 90.0)]
    processed = Processed("wecom:twin", "wangfang", "已记录")
    pg_service.recordings.record("王芳(wangfang)", None, entries, text="x", processed=processed,
                   evaluate=True)
    before = [count(session, t) for t in (RecordingBatch, ScoreEntry, AuditLog, RiskEvaluationQueue)]
    with pytest.raises(IntegrityError):  # a twin of the message: its processed row is taken
        pg_service.recordings.record("王芳(wangfang)", None, entries, text="x", processed=processed,
                       evaluate=True)
    assert [count(session, t) for t in (RecordingBatch, ScoreEntry, AuditLog, RiskEvaluationQueue)] == before
    assert before == [1, 2, 2, 1]


def test_a_connection_the_server_dropped_costs_nothing(pg_service, session):
    assert "已记录 1 条" in say(pg_service, "wangfang", "全勤率 张三 95")
    session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    session.commit()
    session.get_bind().dispose()  # the test's own pooled connections died too
    assert "已记录 1 条" in say(pg_service, "wangfang", "全勤率 李四 90")
    assert count(session, ScoreEntry) == 2 and count(session, ProcessedMessage) == 2


def test_the_statement_connection_outlives_the_thread_that_used_it(pg_service):
    """Under gevent each request is a greenlet that ends with its client's connection: the
    recording's database session must not end with it (a new one for every WeChat connection)."""
    connections = StatementConnections(pg_service.engine)
    backends: list[int] = []

    def one_statement() -> None:
        backends.extend(row[0] for row in connections.fetchall("SELECT pg_backend_pid()", {}))

    for _ in range(4):
        worker = threading.Thread(target=one_statement)
        worker.start()
        worker.join()
    assert len(backends) == 4 and len(set(backends)) == 1


def test_a_savepoint_opening_the_transaction_is_undone_with_it(clean_db):
    """A job's savepoint may be its transaction's first statement: its writes must still go with a
    rollback of the whole (pysqlite, left alone, commits them when the savepoint is released)."""
    maker = make_sessionmaker(clean_db)
    with maker() as session:
        with savepoint(session):
            session.add(Department(name="临时系"))
        session.rollback()
    with maker() as session:
        assert session.scalar(select(func.count()).select_from(Department)) == 0
        with savepoint(session):
            session.add(Department(name="保留系"))
        session.commit()
    with maker() as session:
        assert session.scalars(select(Department.name)).all() == ["保留系"]


def test_concurrent_recordings_each_get_their_own_rows_and_reply(pg_service, session, catalogue):
    names = ["张三", "李四", "王五", "赵六"]
    jobs = [(f"m{n}", planned(session, catalogue, names[n % 4], "A03", 60.0 + n)) for n in range(24)]

    def record(job):
        key, entry = job
        return key, pg_service.recordings.record(
            "王芳(wangfang)", None, [entry], text=f"全勤率 {entry.subject_name} {entry.value:g}", source="wecom",
            source_msg=key, evaluate=True, processed=Processed(f"wecom:{key}", "wangfang", f"已记录 #{FIRST_ID}"))

    with ThreadPoolExecutor(12) as pool:
        recorded = dict(pool.map(record, jobs))
    session.expire_all()
    entries = {e.id: e for e in session.scalars(select(ScoreEntry))}
    assert len(entries) == 24 and count(session, RecordingBatch) == 24 and count(session, RiskEvaluationQueue) == 24
    for key, entry in jobs:
        rec = recorded[key]
        [entry_id] = rec.entry_ids
        row = entries[entry_id]
        assert (row.batch_id, row.source_msg, row.value) == (rec.batch_id, key, entry.value)
        reply = session.scalar(select(ProcessedMessage.reply).where(ProcessedMessage.msg_key == f"wecom:{key}"))
        assert reply == f"已记录 #{entry_id}"
    # each student's 全勤率 replaced in turn: every audit row names the entry before it, none skipped
    by_subject: dict[str, list[AuditLog]] = {}
    for audit in session.scalars(select(AuditLog).order_by(AuditLog.id)):
        by_subject.setdefault(audit.entity_key, []).append(audit)
    assert len(by_subject) == 4
    for audits in by_subject.values():
        chain = [json.loads(a.new_value)["entry"] for a in audits]
        assert chain == sorted(chain) and len(chain) == 6
        assert audits[0].old_value is None
        for before, audit in zip(audits, audits[1:], strict=False):
            assert json.loads(audit.old_value) == json.loads(before.new_value)


def test_a_twin_in_a_group_fails_alone(pg_service, session, catalogue):
    """Redis down and a retry racing its first delivery: the twin's processed key is taken; the
    recordings that shared its statement are written all the same, the twin not at all."""
    entry = planned(session, catalogue, "张三", "A03", 90.0)
    others = [planned(session, catalogue, name, "A03", 80.0) for name in ("李四", "王五", "赵六")]
    writer = pg_service.recordings
    writer.record("王芳(wangfang)", None, [entry], text="t", source_msg="twin",
                  processed=Processed("wecom:twin", "wangfang", "已记录"))
    before = count(session, ScoreEntry)
    barrier = threading.Barrier(4)

    def record(job):
        key, e = job
        barrier.wait()
        try:
            return writer.record("王芳(wangfang)", None, [e], text="t", source_msg=key,
                                 processed=Processed(f"wecom:{key}", "wangfang", "已记录"))
        except IntegrityError as exc:
            return exc

    jobs = [("twin", entry)] + [(f"o{n}", e) for n, e in enumerate(others)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(record, jobs))
    assert isinstance(results[0], IntegrityError)
    assert all(not isinstance(r, Exception) for r in results[1:])
    assert count(session, ScoreEntry) == before + 3
    assert count(session, ProcessedMessage) == 4
