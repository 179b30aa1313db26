"""The outbox: every outbound message is first a row, keyed by recipient + purpose + period."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import JSON, Row, bindparam, cast, func, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.schema import OutboxMessage, utcnow

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def idem_key(recipient: str, purpose: str, period_key: str) -> str:
    """The idempotency key: one message per recipient, purpose and period."""
    return f"{recipient}|{purpose}|{period_key}"


def dialect_insert(session: Session, target: object) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for the session's database that can say ON CONFLICT DO NOTHING."""
    return _INSERTS[session.get_bind().dialect.name](target)


@dataclass(frozen=True)
class Draft:
    """A message to queue: to whom, why, for which period, and what it says."""

    recipient: str
    purpose: str
    period_key: str
    body: str
    channel: str = "wecom"
    msgtype: str = "text"
    title: str | None = None
    url: str | None = None

    @property
    def key(self) -> str:
        return idem_key(self.recipient, self.purpose, self.period_key)

    def row(self) -> dict:
        return dict(recipient=self.recipient, channel=self.channel, purpose=self.purpose,
                    period_key=self.period_key, idem_key=self.key, msgtype=self.msgtype, title=self.title,
                    body=self.body, url=self.url, status="pending", attempts=0, created_at=utcnow())


def insert_rows(session: Session, entity: type, rows: Sequence[dict], *, skip_conflicts: bool = False,
                conflict_columns: Sequence[str] | None = None, returning: Sequence = ()) -> list[Row]:
    """Insert many rows (same keys in each) of a mapped class in one statement, ids ascending in
    their order; `returning` may name the class itself (the new objects, in the session).

    With `skip_conflicts`, a row that meets a unique key (`conflict_columns`, or any) is left
    out: ON CONFLICT DO NOTHING decides, even against a concurrent twin, without a savepoint.
    On PostgreSQL the rows travel as one JSON document, read back with the table's own row type
    (`json_populate_recordset`): one parameter, no placeholder per value to render and parse, and
    json.dumps rather than psycopg's per-element array dumping (a third of a first risk scan's
    writing time). Elsewhere they are a multi-row INSERT (SQLAlchemy batches them).
    """
    if not rows:
        return []
    table = entity.__table__
    columns = list(rows[0])
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        doc = json.dumps([{c: r[c] for c in columns} for r in rows], ensure_ascii=False, default=_iso)
        typed = func.json_populate_recordset(literal_column(f"NULL::{table.name}"), cast(bindparam("rows", doc), JSON))
        # Named as the table's columns already (no column list: it would rename them by position).
        unnested = typed.table_valued(*columns, with_ordinality="ordinality")
        stmt = postgresql.insert(entity).from_select(
            columns, select(*(unnested.c[c] for c in columns)).order_by(unnested.c.ordinality))
    else:
        stmt = dialect_insert(session, entity)
    if skip_conflicts:
        stmt = stmt.on_conflict_do_nothing(index_elements=conflict_columns)
    if returning:
        stmt = stmt.returning(*returning)
    result = session.execute(stmt) if postgres else session.execute(stmt, list(rows))
    return list(result.all()) if returning else []


def _iso(value: object) -> str:
    """Dates and times in JSON, as PostgreSQL reads them."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {value!r}")


def enqueue(session: Session, recipient: str, purpose: str, period_key: str, body: str, *,
            channel: str = "wecom", msgtype: str = "text", title: str | None = None,
            url: str | None = None) -> OutboxMessage | None:
    """Queue a message unless one with the same key exists; returns the new row or None.

    One `INSERT … ON CONFLICT DO NOTHING RETURNING`: the unique key decides, even against
    a concurrent twin, in a single round trip and without disturbing the caller's transaction.
    """
    draft = Draft(recipient, purpose, period_key, body, channel, msgtype, title, url)
    stmt = dialect_insert(session, OutboxMessage).values(draft.row())
    return session.scalars(stmt.on_conflict_do_nothing(index_elements=["idem_key"]).returning(OutboxMessage)).first()


def enqueue_many(session: Session, drafts: Sequence[Draft]) -> dict[str, int]:
    """Queue many messages in one statement with the same ON CONFLICT DO NOTHING; returns
    idempotency key → id of each row inserted (a key already queued is left out)."""
    rows = insert_rows(session, OutboxMessage, [d.row() for d in drafts], skip_conflicts=True,
                       conflict_columns=["idem_key"], returning=(OutboxMessage.idem_key, OutboxMessage.id))
    return dict(rows)


def queued_ids(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """Idempotency key → id of the messages already queued under these keys."""
    out: dict[str, int] = {}
    keys = sorted(set(keys))
    for start in range(0, len(keys), 900):
        out.update(session.execute(select(OutboxMessage.idem_key, OutboxMessage.id)
                                   .where(OutboxMessage.idem_key.in_(keys[start:start + 900]))).all())
    return out
