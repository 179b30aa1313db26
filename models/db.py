"""Engine and session factory; one per process, built from `DATABASE_URL`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from sqlalchemy import ARRAY, ColumnElement, Integer, Select, any_, create_engine, event, literal, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of every table."""


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and synchronous=FULL
    (a commit survives a power cut too: the reply that says 已记录 comes after it)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

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
    return create_engine(url, pool_recycle=1800, pool_size=10, max_overflow=10)


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


class StatementConnections:
    """One autocommitting DBAPI connection per thread, for writes that are a single statement.

    A statement on it is its own transaction (no BEGIN or COMMIT round trip) and skips the pool's
    check-out and reset, which on the chat callback's hottest path costs as much as the statement's
    own client work. Connections are replaced after `recycle` seconds, like the pool's.
    """

    def __init__(self, engine: Engine, recycle: float = 1800) -> None:
        self.engine = engine
        self.recycle = recycle
        self._local = threading.local()

    def _connection(self):  # noqa: ANN202 - the driver's connection
        conn = getattr(self._local, "conn", None)
        if conn is not None and (conn.closed or time.monotonic() - self._local.since > self.recycle):
            self._close()
            conn = None
        if conn is None:
            fairy = self.engine.raw_connection()
            conn = fairy.driver_connection
            fairy.detach()  # ours until closed: the pool neither resets nor reuses it
            conn.autocommit = True
            if self.engine.dialect.name == "postgresql":
                # The same few statements run here all day: plan them once. Left to choose, PostgreSQL
                # kept re-planning the recording statement (a custom plan each time: ~3× its cost).
                conn.execute("SET plan_cache_mode = force_generic_plan")
            self._local.conn, self._local.since = conn, time.monotonic()
        return conn

    def _close(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except self.engine.dialect.loaded_dbapi.Error:
                pass

    def fetchone(self, sql: str, params: dict) -> tuple:
        """Run one statement (committed when this returns) and return its first row."""
        dbapi = self.engine.dialect.loaded_dbapi
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchone()
        except dbapi.OperationalError as exc:
            broken = conn.closed or getattr(conn, "broken", False)
            self._close()
            if broken:
                raise ConnectionLost(str(exc)) from exc
            raise
        except dbapi.IntegrityError as exc:
            raise IntegrityError(sql, params, exc) from exc
