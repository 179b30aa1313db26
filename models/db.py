"""Engine and session factory; one per process, built from `DATABASE_URL`."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from sqlalchemy import ARRAY, ColumnElement, Integer, Select, any_, create_engine, event, literal, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of every table."""


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and synchronous=FULL
    (a commit survives a power cut too: the reply that says 已记录 comes after it).

    `hide_parameters`: an error's message does not list the statement's parameters (message text,
    names, values). PostgreSQL's own DETAIL line may still quote a value, so failures are logged by
    type and code only (models/errors.py; PRODUCT.md §6)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    # No pre-ping (a round trip per message); connections are recycled before servers drop them,
    # and a connection that died anyway fails one message, which WeChat retries.
    return create_engine(url, pool_recycle=1800, pool_size=10, max_overflow=10, hide_parameters=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def savepoint(session: Session) -> SessionTransaction:
    """`session.begin_nested()`, also inside the session's transaction on SQLite.

    pysqlite opens its transaction only before a data-changing statement: a SAVEPOINT issued first
    starts one of its own, and releasing it commits, so the savepoint's writes would outlive a
    rollback of the session. Begin the transaction first there."""
    if session.get_bind().dialect.name == "sqlite":
        connection = session.connection()
        if not connection.connection.dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN")
    return session.begin_nested()


def plain_rows(session: Session, query: Select, work_mem: str | None = None) -> Iterator[tuple]:
    """A large query's rows as plain tuples, for aggregates of 100,000s of rows (SQLAlchemy's Row
    objects, fetched one by one, cost more than the query). On PostgreSQL from a psycopg binary
    cursor: all at once, without a server-side cursor's FETCH round trips; given `work_mem` (a
    from-scratch digest: 600,000 rows at 15,000 students), from a server-side cursor planned for all
    its rows, 20,000 at a time. Elsewhere a chunk at a time through SQLAlchemy."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        for chunk in connection.execute(query.execution_options(yield_per=20_000)).partitions():
            yield from chunk
        return
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    dbapi = connection.connection.dbapi_connection
    if not work_mem:
        with dbapi.cursor(binary=True) as cursor:
            cursor.execute(compiled.string, compiled.params)
            yield from cursor.fetchall()
        return
    session.execute(text("SET LOCAL cursor_tuple_fraction = 1"))
    session.execute(text(f"SET LOCAL work_mem = '{work_mem}'"))
    with dbapi.cursor(name="plain_rows", binary=True) as cursor:
        cursor.itersize = 20_000
        cursor.execute(compiled.string, compiled.params)
        yield from cursor


def in_ids(session: Session, column: ColumnElement, ids: Iterable[int]) -> ColumnElement[bool]:
    """`column IN ids`; on PostgreSQL `column = ANY(array)`: one statement text whatever the number
    of ids, so it is parsed and planned once rather than rendered anew for every list."""
    ids = list(ids)
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(ids, ARRAY(Integer)))
    return column.in_(ids)


def tune_for_aggregates(session: Session) -> None:
    """For one transaction of large GROUP BYs on PostgreSQL: no JIT (compiling costs more than
    running these), and enough work_mem to hash-aggregate instead of walking an index."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '64MB'"))


class ConnectionLost(Exception):
    """The connection broke during a statement: whether it committed is unknown (retry; dedupe decides)."""


# Taken one by one in the array's (ascending) order: two writers never wait on each other crosswise.
# (In psycopg's parameter style; SQLAlchemy's text() gets it with :keys.)
_LOCK_KEYS = "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(CAST(%(keys)s AS bigint[])) AS k) AS keys"


def advisory_key(text: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks, the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def lock_keys(session: Session, keys: Iterable[str]) -> None:
    """Take transaction-level advisory locks on `keys` (PostgreSQL; ascending order, so no two
    writers deadlock). Elsewhere nothing: SQLite lets one writer at a time in anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return
    ordered = sorted({advisory_key(k) for k in keys})
    if ordered:
        session.execute(text(_LOCK_KEYS.replace("%(keys)s", ":keys")), {"keys": ordered})


class StatementConnections:
    """Autocommitting DBAPI connections kept for writes that are a single statement.

    A statement on one is its own transaction (no BEGIN or COMMIT round trip) and skips the pool's
    check-out and reset, which on the chat callback's hottest path costs as much as the statement's
    own client work. A connection is lent for one statement and kept for the next caller, whatever
    thread or greenlet that is (under gevent a request's greenlet ends with its client's connection:
    a connection per greenlet would be a new database session per client). Connections are replaced
    after `recycle` seconds, like the pool's.
    """

    def __init__(self, engine: Engine, recycle: float = 1800) -> None:
        self.engine = engine
        self.recycle = recycle
        self._idle: list[tuple[object, float]] = []  # (connection, opened at), the latest used last
        self._lock = threading.Lock()

    def _open(self):  # noqa: ANN202 - the driver's connection
        fairy = self.engine.raw_connection()
        conn = fairy.driver_connection
        fairy.detach()  # ours until closed: the pool neither resets nor reuses it
        conn.autocommit = True
        if self.engine.dialect.name == "postgresql":
            # The same few statements run here all day: plan them once. Left to choose, PostgreSQL
            # kept re-planning the recording statement (a custom plan each time: ~3× its cost).
            # Their lookups are by key: a plan made while a table was small must not keep walking
            # it whole as it grows (the plan stays until the next ANALYZE), so no sequential scans.
            conn.execute("SET plan_cache_mode = force_generic_plan")
            conn.execute("SET enable_seqscan = off")
        return conn

    def _borrow(self) -> tuple[object, float]:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if not conn.closed and time.monotonic() - since <= self.recycle:
                return conn, since
            self._discard(conn)
        return self._open(), time.monotonic()

    def _give_back(self, conn, since: float) -> None:  # noqa: ANN001
        with self._lock:
            self._idle.append((conn, since))

    def _discard(self, conn) -> None:  # noqa: ANN001
        try:
            conn.close()
        except self.engine.dialect.loaded_dbapi.Error:
            pass

    def fetchall(self, sql: str, params: dict, locks: list[int] | None = None) -> list[tuple]:
        """Run one statement (committed when this returns) and return its rows.

        With `locks` (PostgreSQL advisory lock keys), the statement runs in a transaction that
        first takes those locks, in ascending order, so a concurrent writer of the same keys in
        another process waits for this one to commit and then sees it (a statement's snapshot is
        taken when it starts: the lock must be taken by an earlier statement)."""
        dbapi = self.engine.dialect.loaded_dbapi
        conn, since = self._borrow()
        try:
            rows = self._locked(conn, sql, params, locks) if locks else conn.execute(sql, params).fetchall()
        except dbapi.OperationalError as exc:
            broken = conn.closed or getattr(conn, "broken", False)
            self._discard(conn)
            if broken:
                raise ConnectionLost(str(exc)) from exc
            raise
        except dbapi.IntegrityError as exc:
            self._give_back(conn, since)
            raise IntegrityError(sql, params, exc) from exc
        except dbapi.Error:  # refused (a bad value): an autocommit connection is as good as before
            self._give_back(conn, since)
            raise
        except BaseException:
            self._discard(conn)  # interrupted mid-statement: its state is unknown
            raise
        self._give_back(conn, since)
        return rows

    def _locked(self, conn, sql: str, params: dict, locks: list[int]) -> list[tuple]:  # noqa: ANN001
        """BEGIN, the locks, the statement and COMMIT in one round trip (psycopg's pipeline mode:
        a third of the client CPU of a transaction block's four round trips). On an error the
        connection is closed (and so replaced): an aborted pipeline can leave psycopg believing a
        statement prepared that the server never prepared ('prepared statement does not exist' on
        its next use)."""
        keys = "{" + ",".join(str(k) for k in sorted(set(locks))) + "}"  # a text parameter: cheap to send
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute(_LOCK_KEYS, {"keys": keys})
                cursor = conn.execute(sql, params)
                conn.execute("COMMIT")
            return cursor.fetchall()
        except self.engine.dialect.loaded_dbapi.OperationalError:
            raise  # fetchall discards the connection, and tells a lost one from a refusal
        except BaseException:
            conn.close()  # the transaction ends with it; _borrow never lends a closed connection
            raise


T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    """One caller's item in a `GroupCommit`: woken with its outcome, or to lead the next group."""

    __slots__ = ("item", "woken", "done", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.woken = threading.Event()
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """Writes from one process's threads that arrive together, run as one statement (group commit).

    A caller finding no statement running runs its item at once, alone. Callers that arrive while
    one runs wait; when it returns, the first of them runs everything queued by then (up to
    `limit` items) in one statement, one round trip and one commit for the lot, and so on. `run`
    takes items and returns their results in order; it must be all-or-nothing, and each caller
    returns only once its item is committed. An item never shares a statement with an earlier
    item it has a key in common with (`keys`), so writes to the same thing keep their order and
    each sees the one before. A group the database refuses (a unique key taken, a bad value) is run
    again item by item, so each caller gets its own item's outcome; a lost connection is every
    caller's (none of them committed, or the dedupe says so on the retry).
    """

    def __init__(self, run: Callable[[list[T]], list[R]], keys: Callable[[T], Iterable[Hashable]],
                 limit: int = 64) -> None:
        self._run = run
        self._keys = keys
        self._limit = limit
        self._lock = threading.Lock()
        self._queue: deque[_Slot[T, R]] = deque()
        self._running = False

    def submit(self, item: T) -> R:
        """Run `item` (with whatever else is waiting) and return its result once committed."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._running
            self._running = True
        if not lead:
            slot.woken.wait()
        if not slot.done:  # ours is the first item waiting: run the group it heads
            self._lead()
        return slot.outcome()

    def _take(self) -> list[_Slot[T, R]]:
        group: list[_Slot[T, R]] = []
        taken: set[Hashable] = set()
        held: set[Hashable] = set()  # keys of items left for later: nothing after them may pass
        for slot in self._queue:
            keys = set(self._keys(slot.item))
            if keys & taken or keys & held:
                held |= keys
                continue
            taken |= keys
            group.append(slot)
            if len(group) == self._limit:
                break
        for slot in group:
            self._queue.remove(slot)
        return group

    def _lead(self) -> None:
        with self._lock:
            group = self._take()
        try:
            self._execute(group)
        finally:
            for slot in group:
                if not slot.done:  # only if _execute itself was interrupted
                    slot.error, slot.done = RuntimeError("group commit interrupted"), True
            with self._lock:
                successor = self._queue[0] if self._queue else None
                self._running = successor is not None
            for slot in group:
                slot.woken.set()
            if successor is not None:
                successor.woken.set()

    def _execute(self, group: list[_Slot[T, R]]) -> None:
        try:
            results = self._run([slot.item for slot in group])
        except ConnectionLost as exc:
            for slot in group:
                slot.error, slot.done = exc, True
            return
        except Exception as exc:  # noqa: BLE001 - one item's fault: each item alone tells whose
            if len(group) == 1:
                group[0].error, group[0].done = exc, True
                return
            for slot in group:
                try:
                    slot.result = self._run([slot.item])[0]
                except Exception as alone:  # noqa: BLE001 - that caller's own error, raised to it
                    slot.error = alone
                slot.done = True
            return
        for slot, result in zip(group, results, strict=True):
            slot.result, slot.done = result, True
