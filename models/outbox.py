"""The outbox: every outbound message is first a row, keyed by recipient + purpose + period."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.schema import OutboxMessage, utcnow

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def idem_key(recipient: str, purpose: str, period_key: str) -> str:
    """The idempotency key: one message per recipient, purpose and period."""
    return f"{recipient}|{purpose}|{period_key}"


def dialect_insert(session: Session, entity: type) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for the session's database that can say ON CONFLICT DO NOTHING."""
    return _INSERTS[session.get_bind().dialect.name](entity)


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


def _insert_new(session: Session) -> postgresql.Insert | sqlite.Insert:
    # The unique key decides, even against a concurrent twin, without disturbing the caller's
    # transaction (no savepoint, no IntegrityError).
    return dialect_insert(session, OutboxMessage).on_conflict_do_nothing(index_elements=["idem_key"])


def enqueue(session: Session, recipient: str, purpose: str, period_key: str, body: str, *,
            channel: str = "wecom", msgtype: str = "text", title: str | None = None,
            url: str | None = None) -> OutboxMessage | None:
    """Queue a message unless one with the same key exists; returns the new row or None.

    One `INSERT … ON CONFLICT DO NOTHING RETURNING`, in a single round trip.
    """
    draft = Draft(recipient, purpose, period_key, body, channel, msgtype, title, url)
    return session.scalars(_insert_new(session).values(draft.row()).returning(OutboxMessage)).first()


def enqueue_many(session: Session, drafts: Sequence[Draft]) -> dict[str, int]:
    """Queue many messages with the same ON CONFLICT DO NOTHING (a statement per thousand rows);
    returns idempotency key → id of each row inserted: a key already queued is left out."""
    if not drafts:
        return {}
    rows = session.execute(_insert_new(session).returning(OutboxMessage.idem_key, OutboxMessage.id),
                           [d.row() for d in drafts]).all()
    return dict(rows)


def queued_ids(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """Idempotency key → id of the messages already queued under these keys."""
    out: dict[str, int] = {}
    keys = sorted(set(keys))
    for start in range(0, len(keys), 900):
        out.update(session.execute(select(OutboxMessage.idem_key, OutboxMessage.id)
                                   .where(OutboxMessage.idem_key.in_(keys[start:start + 900]))).all())
    return out
