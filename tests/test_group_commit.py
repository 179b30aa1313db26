"""Group commit: recordings that arrive together from a worker's threads share one statement, yet
each caller gets its own outcome, writes to the same subject keep their order, and a group the
database refuses is sorted out item by item (models.db.GroupCommit, models.scores.RecordingWriter)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models.db import ConnectionLost, GroupCommit
from models.schema import AuditLog, ProcessedMessage, RecordingBatch, RiskEvaluationQueue, ScoreEntry
from models.scores import FIRST_ID, Processed
from tests.chat import make_service
from tests.factories import small_college
from tests.test_evaluation import TODAY, count, planned


class Gate:
    """A `run` for GroupCommit that holds its first statement until told, and notes every group."""

    def __init__(self, fail_on: str | None = None, error: type[Exception] = ValueError) -> None:
        self.groups: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on
        self.error = error

    def run(self, items: list[str]) -> list[str]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.started.set()
            assert self.release.wait(5)
        if self.fail_on in items:
            raise self.error(f"refused {self.fail_on}")
        return [item.upper() for item in items]


def submit_while_held(gate: Gate, first: str, rest: list[str], keys=lambda item: {item[0]}):
    """`first` runs and is held; `rest` arrive meanwhile (in order); then all are let go."""
    group = GroupCommit(gate.run, keys)
    outcomes: dict[str, str | Exception] = {}

    def call(item: str) -> None:
        try:
            outcomes[item] = group.submit(item)
        except Exception as exc:  # noqa: BLE001 - what the caller would see
            outcomes[item] = exc

    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    assert gate.started.wait(5)
    for item in rest:
        t = threading.Thread(target=call, args=(item,))
        t.start()
        threads.append(t)
        while sum(1 for _ in group._queue) < len(threads) - 1:  # queued in this order
            threading.Event().wait(0.001)
    gate.release.set()
    for t in threads:
        t.join(5)
    return outcomes


def test_what_arrives_during_a_statement_runs_as_the_next_one():
    gate = Gate()
    outcomes = submit_while_held(gate, "a1", ["b1", "c1", "d1"])
    assert gate.groups == [["a1"], ["b1", "c1", "d1"]]
    assert outcomes == {"a1": "A1", "b1": "B1", "c1": "C1", "d1": "D1"}


def test_writes_to_the_same_key_never_share_a_statement_and_keep_their_order():
    gate = Gate()
    # keys are the first letter: b2 waits for b1, and c1 (after b2) still passes; b3 follows b2
    outcomes = submit_while_held(gate, "a1", ["b1", "b2", "c1", "b3"])
    assert gate.groups == [["a1"], ["b1", "c1"], ["b2"], ["b3"]]
    assert all(outcomes[k] == k.upper() for k in outcomes)


def test_an_item_that_waits_for_a_key_holds_back_later_items_with_its_other_keys():
    gate = Gate()
    keys = {"a1": {"a"}, "b1": {"b"}, "bc": {"b", "c"}, "c1": {"c"}}
    outcomes = submit_while_held(gate, "a1", ["b1", "bc", "c1"], keys=lambda item: keys[item])
    # "bc" waits for "b1"; "c1" came after "bc", so it may not overtake it on "c"
    assert gate.groups == [["a1"], ["b1"], ["bc"], ["c1"]]
    assert len(outcomes) == 4


def test_a_refused_group_is_run_item_by_item_and_only_the_culprit_fails():
    gate = Gate(fail_on="c1")
    outcomes = submit_while_held(gate, "a1", ["b1", "c1", "d1"])
    assert gate.groups == [["a1"], ["b1", "c1", "d1"], ["b1"], ["c1"], ["d1"]]
    assert outcomes["b1"] == "B1" and outcomes["d1"] == "D1"
    assert isinstance(outcomes["c1"], ValueError)


def test_a_lost_connection_fails_the_whole_group_without_a_retry():
    gate = Gate(fail_on="c1", error=ConnectionLost)
    outcomes = submit_while_held(gate, "a1", ["b1", "c1"])
    assert gate.groups == [["a1"], ["b1", "c1"]]  # nothing is known committed: each caller retries itself
    assert outcomes["a1"] == "A1"
    assert isinstance(outcomes["b1"], ConnectionLost) and isinstance(outcomes["c1"], ConnectionLost)


def test_alone_an_item_runs_at_once():
    runs: list[list[int]] = []
    group = GroupCommit(lambda items: runs.append(items) or [i * 2 for i in items], lambda i: {i})
    assert [group.submit(i) for i in range(3)] == [0, 2, 4]
    assert runs == [[0], [1], [2]]


# ── on PostgreSQL, through the recording statement ───────────────────────────────────────────────

@pytest.fixture
def college(session):
    return small_college(session)


@pytest.fixture
def pg_service(college, db_url, redis_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("group commit is the PostgreSQL recording path's")
    return make_service(db_url, TODAY, redis_url)


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
