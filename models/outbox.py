"""The outbox: every outbound message is first a row, keyed by recipient + purpose + period."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.schema import OutboxMessage, utcnow

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def idem_key(recipient: str, purpose: str, period_key: str) -> str:
    """The idempotency key: one message per recipient, purpose and period."""
    return f"{recipient}|{purpose}|{period_key}"


def enqueue(session: Session, recipient: str, purpose: str, period_key: str, body: str, *,
            channel: str = "wecom", msgtype: str = "text", title: str | None = None,
            url: str | None = None) -> OutboxMessage | None:
    """Queue a message unless one with the same key exists; returns the new row or None.

    One `INSERT … ON CONFLICT DO NOTHING RETURNING`: the unique key decides, even against
    a concurrent twin, in a single round trip and without disturbing the caller's transaction.
    """
    insert = _INSERTS[session.get_bind().dialect.name]
    stmt = (insert(OutboxMessage)
            .values(recipient=recipient, channel=channel, purpose=purpose, period_key=period_key,
                    idem_key=idem_key(recipient, purpose, period_key), msgtype=msgtype, title=title,
                    body=body, url=url, status="pending", attempts=0, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["idem_key"])
            .returning(OutboxMessage))
    return session.scalars(stmt).first()
