"""The one write path of score entries: recording (chat, `scores import`) and undo (`撤销`, an
import replacing its earlier totals), each with its audit rows, under the same advisory locks.

A recording is written by one statement (`_RECORD_MANY`) on PostgreSQL, through either of two
entry points: `RecordingWriter.record` (chat: autocommitted, group-committed with the recordings
of the process's other threads) and `record_entries` (inside a session's transaction: imports,
and chat on SQLite, where Core inserts write the same rows). `revoke` undoes entries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from models.catalogue import ScorePoint
from models.db import GroupCommit, StatementConnections, advisory_key, lock_keys
from models.periods import Calendar, Term
from models.schema import (
    AuditLog,
    ProcessedMessage,
    RecordingBatch,
    RiskEvaluationQueue,
    ScoreEntry,
    Semester,
    utcnow,
)


def load_calendar(session: Session) -> Calendar:
    """The 校历 from the database (empty: the default rule)."""
    rows = session.scalars(select(Semester)).all()
    return Calendar([Term(r.year, r.term, r.start, r.end) for r in rows])


@dataclass(frozen=True)
class PlannedEntry:
    """A checked line of a recording, ready to write."""

    point: ScorePoint
    student_id: int | None
    class_id: int | None
    subject_name: str
    value: float
    occurred_on: date
    period_key: str
    semester_key: str

    @property
    def point_code(self) -> str:
        return self.point.code


def _subject_key(e: ScoreEntry | PlannedEntry) -> str:
    who = f"student:{e.student_id}" if e.student_id else f"class:{e.class_id}"
    code = e.point.code if isinstance(e, PlannedEntry) else e.point_code
    return f"{who}/{code}/{e.period_key}"


def _replaces(p: PlannedEntry) -> bool:
    """Whether a record replaces the subject's value (count and observation points add)."""
    return not (p.point.accumulates or p.point.is_observation)


def _chain_keys(planned: list[PlannedEntry]) -> list[str]:
    """The audit chains a recording extends: one per replaced subject, point and period."""
    return [f"{_subject_key(p)}/{p.semester_key}" for p in planned if _replaces(p)]


def _superseded(session: Session, planned: list[PlannedEntry]) -> dict[str, tuple[int, float]]:
    """(entry id, value) of the live entries that replacing records supersede, by subject key.

    One query per point and period; count and observation points add rather than
    replace, so they supersede nothing.
    """
    groups: dict[tuple[str, str, str], list[PlannedEntry]] = {}
    for p in planned:
        if _replaces(p):
            groups.setdefault((p.point.code, p.period_key, p.semester_key), []).append(p)
    found: dict[str, tuple[int, float]] = {}
    for (code, period, semester), group in groups.items():
        students = [p.student_id for p in group if p.student_id]
        classes = [p.class_id for p in group if not p.student_id]
        subject = or_(ScoreEntry.student_id.in_(students), ScoreEntry.class_id.in_(classes))
        rows = session.execute(
            select(ScoreEntry.id, ScoreEntry.student_id, ScoreEntry.class_id, ScoreEntry.value)
            .where(subject, ScoreEntry.point_code == code, ScoreEntry.period_key == period,
                   ScoreEntry.semester_key == semester, ScoreEntry.revoked_at.is_(None))
            .order_by(ScoreEntry.id)
        )
        for r in rows:
            who = f"student:{r.student_id}" if r.student_id else f"class:{r.class_id}"
            found[f"{who}/{code}/{period}"] = (r.id, r.value)  # ascending ids: the newest wins
    return found


# A reply that names the entries it recorded is written with these in place of their ids,
# which the database fills in (models.scores.fill_ids) in the same statement as the entries.
FIRST_ID, LAST_ID = "\u2983first\u2984", "\u2983last\u2984"


def fill_ids(reply: str, first: int, last: int) -> str:
    """The reply with the first and last entry ids put in."""
    return reply.replace(FIRST_ID, str(first)).replace(LAST_ID, str(last))


@dataclass(frozen=True)
class Processed:
    """The processed-message row a recording writes with itself: key, sender, reply (with id markers)."""

    msg_key: str
    sender: str
    reply: str


@dataclass(frozen=True)
class Recorded:
    """What a recording wrote: its batch and its entries' ids, in line order."""

    batch_id: int
    entry_ids: list[int]

    @property
    def first(self) -> int:
        return self.entry_ids[0]

    @property
    def last(self) -> int:
        return self.entry_ids[-1]


def _entry_values(planned: list[PlannedEntry], recorder_id: int | None, source: str, source_msg: str | None,
                  now: datetime) -> list[dict]:
    return [dict(
        point_code=p.point.code, student_id=p.student_id, class_id=p.class_id, period_key=p.period_key,
        semester_key=p.semester_key, occurred_on=p.occurred_on, value=p.value, recorder_id=recorder_id,
        source=source, source_msg=source_msg, created_at=now,
    ) for p in planned]


def _audit_json(entry_id: int, value: float) -> str:
    return json.dumps({"entry": entry_id, "value": value})


def record_entries(session: Session, actor_name: str, recorder_id: int | None,
                   planned: list[PlannedEntry], *, text: str, source: str = "chat",
                   source_msg: str | None = None, evaluate: bool = False,
                   processed: Processed | None = None) -> Recorded:
    """Write one recording (a message or an import) with an audit row per entry, in the session's transaction.

    The write path's entry point inside a transaction (imports; chat on SQLite): on PostgreSQL the
    same statement `RecordingWriter` runs, after the same advisory locks; SQLite, which has no
    data-modifying CTEs, gets the same rows from Core inserts. `evaluate` queues the recording for
    the early-warning check; `processed` adds the message's processed row. The caller commits.
    """
    recording = Recording(actor_name, recorder_id, planned, text, source, source_msg, evaluate, processed, utcnow())
    session.flush()
    # Another process recording the same subject, point and period waits here until this one
    # commits (and this one for it), so each sees the entry it replaces: one unbroken audit chain.
    lock_keys(session, _chain_keys(planned))
    if session.get_bind().dialect.name == "postgresql":
        params, _locks = _statement([recording])
        rows = session.connection().exec_driver_sql(_RECORD_MANY, params).all()
        return _written(rows, 1)[0]
    return _record_sqlite(session, recording)


def _record_sqlite(session: Session, r: Recording) -> Recorded:
    """The rows `_RECORD_MANY` writes, as Core inserts (a round trip per table)."""
    planned, now = r.planned, r.now
    batch_id = session.execute(insert(RecordingBatch).values(
        recorder_id=r.recorder_id, source=r.source, source_msg=r.source_msg, text=r.text, created_at=now,
    ).returning(RecordingBatch.id)).scalar_one()
    superseded = _superseded(session, planned)
    values = _entry_values(planned, r.recorder_id, r.source, r.source_msg, now)
    for v in values:
        v["batch_id"] = batch_id
    ids = session.scalars(insert(ScoreEntry).returning(ScoreEntry.id, sort_by_parameter_order=True),
                          values).all()
    audits = []
    for p, entry_id in zip(planned, ids, strict=True):
        previous = superseded.get(_subject_key(p))
        audits.append(dict(
            at=now, actor=r.actor_name, action="record", entity="score_entry", entity_key=_subject_key(p),
            old_value=None if previous is None else _audit_json(*previous),
            new_value=_audit_json(entry_id, p.value), source_msg=r.source_msg,
        ))
    session.execute(insert(AuditLog), audits)
    if r.evaluate:
        session.execute(insert(RiskEvaluationQueue).values(batch_id=batch_id, queued_at=now))
    if r.processed is not None:
        session.execute(insert(ProcessedMessage).values(
            msg_key=r.processed.msg_key, sender=r.processed.sender,
            reply=fill_ids(r.processed.reply, ids[0], ids[-1]), at=now))
    return Recorded(batch_id, list(ids))


# PostgreSQL: recordings in one statement, committed on its own (autocommit), each recording
# complete: its batch and entries (ids drawn first, so each audit row knows its entry), the
# superseded entries looked up by index in the statement's snapshot (so never the new ones; the
# subject tests on `ids` gate the two lookups, so an entry runs only its own), the audit rows in
# the same JSON as `_record_sqlite` writes, the evaluation queue row and the processed-message row
# with the reply. `rec` numbers the recordings, `ord` the entries.
_RECORD_MANY = """
WITH r AS (
    SELECT * FROM json_to_recordset(%(recs)s::json) AS r(
        rec int, recorder int, source text, msg text, text text, actor text, evaluate bool, now timestamptz,
        key text, sender text, reply text)
),
rb AS (
    SELECT nextval(pg_get_serial_sequence('recording_batch', 'id')) AS batch_id, r.* FROM r
),
batch AS (
    INSERT INTO recording_batch (id, recorder_id, source, source_msg, text, created_at)
    SELECT batch_id, recorder, source, msg, text, now FROM rb ORDER BY rec
),
p AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS p(
        rec int, code text, student_id int, class_id int, period_key text, semester_key text, occurred_on date,
        value float8, value_json text, replaces bool, entity_key text, ord bigint)
),
ids AS (
    SELECT nextval(pg_get_serial_sequence('score_entry', 'id')) AS id, p.* FROM p
),
entries AS (
    INSERT INTO score_entry (id, point_code, student_id, class_id, period_key, semester_key, occurred_on, value,
                             recorder_id, batch_id, source, source_msg, created_at)
    SELECT ids.id, ids.code, ids.student_id, ids.class_id, ids.period_key, ids.semester_key, ids.occurred_on,
           ids.value, rb.recorder, rb.batch_id, rb.source, rb.msg, rb.now
    FROM ids JOIN rb ON rb.rec = ids.rec ORDER BY ids.ord
),
old AS (
    SELECT ids.ord, o.id, o.value FROM ids CROSS JOIN LATERAL (
        SELECT * FROM (
            (SELECT s.id, s.value FROM score_entry s
             WHERE ids.student_id IS NOT NULL AND s.student_id = ids.student_id AND s.point_code = ids.code
               AND s.period_key = ids.period_key AND s.semester_key = ids.semester_key AND s.revoked_at IS NULL
             ORDER BY s.id DESC LIMIT 1)
            UNION ALL
            (SELECT s.id, s.value FROM score_entry s
             WHERE ids.student_id IS NULL AND s.class_id = ids.class_id AND s.point_code = ids.code
               AND s.period_key = ids.period_key AND s.semester_key = ids.semester_key AND s.revoked_at IS NULL
             ORDER BY s.id DESC LIMIT 1)
        ) found LIMIT 1
    ) o WHERE ids.replaces
),
audit AS (
    INSERT INTO audit_log (at, actor, action, entity, entity_key, old_value, new_value, source_msg)
    SELECT rb.now, rb.actor, 'record', 'score_entry', ids.entity_key,
           CASE WHEN old.id IS NOT NULL THEN format('{"entry": %%s, "value": %%s}', old.id,
                CASE WHEN old.value = trunc(old.value) AND abs(old.value) < 1e15
                     THEN old.value::bigint::text || '.0' ELSE old.value::text END) END,
           format('{"entry": %%s, "value": %%s}', ids.id, ids.value_json), rb.msg
    FROM ids JOIN rb ON rb.rec = ids.rec LEFT JOIN old ON old.ord = ids.ord ORDER BY ids.ord
),
queued AS (
    INSERT INTO risk_evaluation_queue (batch_id, queued_at) SELECT batch_id, now FROM rb WHERE evaluate ORDER BY rec
),
processed AS (
    INSERT INTO processed_message (msg_key, sender, reply, at)
    SELECT rb.key, rb.sender, replace(replace(rb.reply, %(first_marker)s, min(ids.id)::text),
                                      %(last_marker)s, max(ids.id)::text), rb.now
    FROM rb JOIN ids ON ids.rec = rb.rec WHERE rb.key IS NOT NULL
    GROUP BY rb.rec, rb.key, rb.sender, rb.reply, rb.now ORDER BY rb.rec
)
SELECT rb.rec, rb.batch_id, array_agg(ids.id ORDER BY ids.ord) FROM rb JOIN ids ON ids.rec = rb.rec
GROUP BY rb.rec, rb.batch_id
"""


@dataclass(frozen=True)
class Recording:
    """One recording waiting for `RecordingWriter`: `record_entries`'s arguments."""

    actor_name: str
    recorder_id: int | None
    planned: list[PlannedEntry]
    text: str
    source: str
    source_msg: str | None
    evaluate: bool
    processed: Processed | None
    now: datetime


class RecordingWriter:
    """`record_entries` for PostgreSQL: a recording in one round trip, committed (durable) when
    `record` returns, and recordings that arrive together from a process's threads committed
    together (`GroupCommit`: one statement, one commit for all of them)."""

    def __init__(self, statements: StatementConnections) -> None:
        self.statements = statements
        self._group: GroupCommit[Recording, Recorded] = GroupCommit(self._write, _recording_keys)

    def record(self, actor_name: str, recorder_id: int | None, planned: list[PlannedEntry], *, text: str,
               source: str = "chat", source_msg: str | None = None, evaluate: bool = False,
               processed: Processed | None = None) -> Recorded:
        """The same rows as `record_entries`; an IntegrityError (the processed row's key already
        taken by a twin of the message) means nothing of this recording was written."""
        return self._group.submit(Recording(actor_name, recorder_id, planned, text, source, source_msg,
                                            evaluate, processed, utcnow()))

    def _write(self, recordings: list[Recording]) -> list[Recorded]:
        params, locks = _statement(recordings)
        return _written(self.statements.fetchall(_RECORD_MANY, params, locks=locks), len(recordings))


def _statement(recordings: list[Recording]) -> tuple[dict, list[int]]:
    """`_RECORD_MANY`'s parameters for `recordings`, and the advisory lock keys it must run under."""
    recs, rows = [], []
    for n, r in enumerate(recordings):
        recs.append(dict(
            rec=n, recorder=r.recorder_id, source=r.source, msg=r.source_msg, text=r.text, actor=r.actor_name,
            evaluate=r.evaluate, now=r.now.isoformat(),
            key=r.processed and r.processed.msg_key, sender=r.processed and r.processed.sender,
            reply=r.processed and r.processed.reply))
        rows += [dict(rec=n, code=p.point.code, student_id=p.student_id, class_id=p.class_id,
                      period_key=p.period_key, semester_key=p.semester_key, occurred_on=p.occurred_on.isoformat(),
                      value=p.value, value_json=json.dumps(p.value),
                      replaces=_replaces(p),
                      entity_key=_subject_key(p), ord=len(rows) + k) for k, p in enumerate(r.planned)]
    params = dict(recs=json.dumps(recs, ensure_ascii=False), rows=json.dumps(rows, ensure_ascii=False),
                  first_marker=FIRST_ID, last_marker=LAST_ID)
    return params, [advisory_key(k) for r in recordings for k in _chain_keys(r.planned)]


def _written(rows: Sequence[Sequence], count: int) -> list[Recorded]:
    """`_RECORD_MANY`'s result rows (rec, batch id, entry ids) as a `Recorded` per recording, in order."""
    written = {rec: Recorded(batch_id, list(ids)) for rec, batch_id, ids in rows}
    return [written[n] for n in range(count)]


def _recording_keys(recording: Recording) -> set[tuple[str, str]]:
    """What a recording may supersede: two recordings of the same subject, point and period never
    share a statement (in one, neither would see the other's entry)."""
    return {(_subject_key(p), p.semester_key) for p in recording.planned}


def last_batch(session: Session, recorder_id: int) -> RecordingBatch | None:
    """The recorder's most recent recording that is not undone yet."""
    return session.scalar(
        select(RecordingBatch)
        .where(RecordingBatch.recorder_id == recorder_id, RecordingBatch.revoked_at.is_(None))
        .order_by(RecordingBatch.id.desc())
        .limit(1)
    )


def revoke(session: Session, actor_name: str, recorder_id: int | None, entries: list[ScoreEntry],
           source_msg: str | None) -> list[ScoreEntry]:
    """Undo entries: a recorded change (revoked_at + audit), never a delete; returns those undone.

    Under the recordings' advisory locks, so a recording of the same subject, point and period
    waits for the undo (and the undo for it); an entry another undo took first is skipped. A batch
    left with no live entry counts as undone (`撤销` skips it).
    """
    if not entries:
        return []
    session.flush()
    lock_keys(session, sorted({f"{_subject_key(e)}/{e.semester_key}" for e in entries}))
    live = set(session.scalars(select(ScoreEntry.id).where(
        ScoreEntry.id.in_([e.id for e in entries]), ScoreEntry.revoked_at.is_(None))))
    entries = [e for e in entries if e.id in live]
    now = utcnow()
    for e in entries:
        e.revoked_at = now
        e.revoked_by = recorder_id
        session.add(AuditLog(
            actor=actor_name, action="revoke", entity="score_entry", entity_key=_subject_key(e),
            old_value=_audit_json(e.id, e.value), new_value=None, source_msg=source_msg,
        ))
    session.flush()
    batch_ids = {e.batch_id for e in entries}
    if batch_ids:
        still = set(session.scalars(select(ScoreEntry.batch_id).where(
            ScoreEntry.batch_id.in_(batch_ids), ScoreEntry.revoked_at.is_(None)).distinct()))
        for batch in session.scalars(select(RecordingBatch).where(
                RecordingBatch.id.in_(batch_ids - still), RecordingBatch.revoked_at.is_(None))):
            batch.revoked_at = now
    return entries
