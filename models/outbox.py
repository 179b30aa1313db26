"""The outbox: every outbound message is first a row, keyed by recipient + purpose + period."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.schema import OutboxMessage


def idem_key(recipient: str, purpose: str, period_key: str) -> str:
    """The idempotency key: one message per recipient, purpose and period."""
    return f"{recipient}|{purpose}|{period_key}"


def enqueue(session: Session, recipient: str, purpose: str, period_key: str, body: str, *,
            channel: str = "wecom", msgtype: str = "text", title: str | None = None,
            url: str | None = None) -> OutboxMessage | None:
    """Queue a message unless one with the same key exists; returns the new row or None.

    Safe against a concurrent twin: the unique key decides, inside a savepoint, so the
    caller's transaction goes on.
    """
    key = idem_key(recipient, purpose, period_key)
    if session.scalar(select(OutboxMessage.id).where(OutboxMessage.idem_key == key)) is not None:
        return None
    row = OutboxMessage(recipient=recipient, channel=channel, purpose=purpose, period_key=period_key,
                        idem_key=key, msgtype=msgtype, title=title, body=body, url=url)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return None
    return row
