"""The early-warning check that follows a recording, outside the recording's transaction.

A recording whose new values could trip a rule (models.risk.matching.rules_touched) writes a row to
`risk_evaluation_queue` in its own transaction; `evaluate_queued` takes rows off the queue and
evaluates the rules for their entries' students in one set-based pass, in the same transaction
as the warnings it writes. So the chat callback does none of the risk queries, a failure in the
check never costs the recording, and a queued recording is evaluated exactly once, whichever
process gets to it first (the web worker right after replying, or the scheduler a minute later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from functools import lru_cache

from sqlalchemy import Row, delete, select, text
from sqlalchemy.orm import Session

from models.catalogue import Catalogue
from models.db import savepoint
from models.errors import log_failure
from models.risk.checks import evaluate_entries
from models.risk.matching import rules_touched
from models.risk.notices import NoNotifier, Notify
from models.risk.rules import RuleBook
from models.risk.warnings import Outcome
from models.schema import RiskEvaluationQueue, ScoreEntry
from models.scores import PlannedEntry, load_calendar

log = logging.getLogger(__name__)

BATCHES_PER_PASS = 500  # recordings evaluated together in one transaction
# The background thread waits this long after a recording before it evaluates, so that the
# recordings of a busy moment are evaluated together (one set of queries for all their students).
COALESCE_S = 1.0


@dataclass(frozen=True)
class _Value:
    point_code: str
    student_id: int | None
    value: float


def needs_evaluation(book: RuleBook, catalogue: Catalogue, planned: Sequence[PlannedEntry]) -> bool:
    """Could these new values trip an early-warning rule of `book`? (The everyday 全勤率 100 cannot.)"""
    return _could_trip(book, catalogue,
                       frozenset((p.point_code, p.student_id is not None, p.value) for p in planned))


@lru_cache(maxsize=4096)
def _could_trip(book: RuleBook, catalogue: Catalogue, values: frozenset[tuple[str, bool, float]]) -> bool:
    """The rules' answer depends only on which points got which values, for students or classes."""
    probes = [_Value(code, 1 if for_student else None, value) for code, for_student, value in values]
    return bool(rules_touched(book, catalogue, probes))


def _take(session: Session, limit: int) -> tuple[int, list[Row]]:
    """Remove up to `limit` queued recordings, oldest first (other workers skip the ones taken);
    return how many, and the live entries they wrote (point_code, student_id, value)."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(text(
            "WITH taken AS (DELETE FROM risk_evaluation_queue WHERE batch_id IN (SELECT batch_id FROM "
            "risk_evaluation_queue ORDER BY batch_id LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING batch_id) "
            "SELECT t.batch_id, e.point_code, e.student_id, e.value FROM taken t LEFT JOIN score_entry e "
            "ON e.batch_id = t.batch_id AND e.revoked_at IS NULL"), {"n": limit}).all()
        return len({r.batch_id for r in rows}), [r for r in rows if r.point_code is not None]
    ids = list(session.scalars(select(RiskEvaluationQueue.batch_id).order_by(RiskEvaluationQueue.batch_id)
                               .limit(limit)))
    if not ids:
        return 0, []
    session.execute(delete(RiskEvaluationQueue).where(RiskEvaluationQueue.batch_id.in_(ids)))
    entries = session.execute(select(ScoreEntry.point_code, ScoreEntry.student_id, ScoreEntry.value).where(
        ScoreEntry.batch_id.in_(ids), ScoreEntry.revoked_at.is_(None))).all()
    return len(ids), list(entries)


@dataclass
class Evaluated:
    """What one drain of the queue did."""

    recordings: int = 0
    failed: int = 0
    outcome: Outcome | None = None


def evaluate_queued(sessions: Callable[[], Session], catalogue: Catalogue, now: datetime, today: date, *,
                    book: RuleBook, notify: Notify | None, tz: tzinfo, limit: int = BATCHES_PER_PASS) -> Evaluated:
    """Evaluate what is queued, `limit` recordings a pass, each pass one transaction.

    A pass that finds fewer than `limit` ends the run: what is recorded meanwhile waits for the next
    run (a moment later), so under a steady stream of recordings the passes stay large and few.
    Without a notifier (`NoNotifier`) the pass fails loudly and its recordings stay queued.
    """
    done = Evaluated()
    while True:
        with sessions() as session:
            taken, entries = _take(session, limit)
            if not taken:
                return done
            try:
                with savepoint(session):
                    outcome = evaluate_entries(session, book, catalogue, load_calendar(session), entries, now,
                                               today, notify=notify, tz=tz)
            except NoNotifier:
                raise  # a wiring mistake, not a data problem: the recordings stay queued (no commit)
            except Exception as exc:  # noqa: BLE001 - the daily scan evaluates the same rules again
                log_failure(log, f"early-warning check of {taken} recordings failed; the daily scan will catch up",
                            exc)
                done.failed += taken
            else:
                done.outcome = outcome
            session.commit()
            done.recordings += taken
            if taken < limit:
                return done


class Evaluator:
    """Runs `evaluate_queued` for one process: at once (console, tests) or on a background thread (web)."""

    def __init__(self, run: Callable[[], Evaluated], background: bool) -> None:
        self._run = run
        self.background = background
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def recorded(self) -> None:
        """A recording was queued for the check: run it now, or wake the background thread."""
        if not self.background:
            self.drain()
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="risk-evaluation", daemon=True)
                self._thread.start()
        self._wake.set()

    def drain(self) -> Evaluated:
        """Evaluate everything queued, in this thread."""
        return self._run()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(COALESCE_S)
            self._wake.clear()
            try:
                self.drain()
            except Exception as exc:  # noqa: BLE001 - keep the thread; the queue stays for the next wake or the scheduler
                log_failure(log, "early-warning evaluation pass failed", exc)
