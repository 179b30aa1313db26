"""The outbox rows a flush takes: what is due, claimed under the flush's token (committed before any
call), marked as the calls end; stored calls no row waits for any more are pruned.

A row is due when it is pending and its next attempt has come, when another flusher's claim on it
lapsed (sending), or, for a WeCom flush, when its call's outcome is unknown (inflight, its claim
lapsed): that call is made again with its stored payload while WeCom's duplicate check still
covers it (RESEND_WITHIN_S), and flagged for the 管理员 after.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core.render import render
from models.schema import OutboxCall, OutboxMessage
from scheduler.sending import DUPLICATE_CHECK_S, RESEND_WITHIN_S

log = logging.getLogger(__name__)

KEEP_CALLS_S = 2 * 86400  # a stored call no row waits for is pruned after this


@dataclass
class Claim:
    """What one flush took: fresh rows to bundle, and unknown calls (ref → rows) to make again."""

    fresh: list[OutboxMessage]
    resend: dict[str, tuple[dict, list[OutboxMessage]]]
    taken: int = 0  # rows selected (some may have been flagged too late rather than claimed)
    last_id: int = 0  # the highest id selected: the next batch starts after it


def _due(now: datetime, unknown_calls: bool) -> object:
    due = or_(
        (OutboxMessage.status == "pending")
        & (OutboxMessage.next_attempt_at.is_(None) | (OutboxMessage.next_attempt_at <= now)),
        (OutboxMessage.status == "sending") & (OutboxMessage.claimed_until < now),
    )
    if unknown_calls:
        # A call was under way when its process died, or its answer never came.
        due = or_(due, (OutboxMessage.status == "inflight") & (OutboxMessage.claimed_until < now))
    return due


def claim_due(session: Session, now: datetime, limit: int, claim_s: float, token: str,
           recipients: set[str] | None, unknown_calls: bool, after: int = 0) -> Claim:
    """Take what is due for this flush (committed), up to `limit` rows with ids above `after`: fresh
    rows under `token`, unknown calls under their ref."""
    query = select(OutboxMessage).where(_due(now, unknown_calls), OutboxMessage.id > after)
    if recipients is not None:
        query = query.where(OutboxMessage.recipient.in_(sorted(recipients)))
    query = query.order_by(OutboxMessage.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    until = now + timedelta(seconds=claim_s)
    unknown: dict[str, list[OutboxMessage]] = defaultdict(list)
    for row in rows:
        if row.status == "inflight" and row.delivery_ref:
            unknown[row.delivery_ref].append(row)
    calls = {c.ref: c for c in session.scalars(select(OutboxCall).where(OutboxCall.ref.in_(sorted(unknown))))} \
        if unknown else {}
    resend: dict[str, tuple[dict, list[OutboxMessage]]] = {}
    late: list[OutboxMessage] = []
    fresh: list[OutboxMessage] = []
    for row in rows:
        call = calls.get(row.delivery_ref or "") if row.status == "inflight" else None
        if call is not None and _aware(call.created_at, now) < now - timedelta(seconds=RESEND_WITHIN_S):
            late.append(row)
        elif call is not None:
            row.claimed_until = until  # stays inflight under its call's ref
            resend.setdefault(call.ref, (json.loads(call.payload), []))[1].append(row)
        else:  # pending, a lapsed claim, or an inflight row whose call was not stored (older versions)
            row.status, row.claimed_until, row.delivery_ref = "sending", until, token
            fresh.append(row)
    if late:
        too_late = render("errors/delivery_too_late.txt", hours=DUPLICATE_CHECK_S // 3600)
        for row in late:
            row.status, row.claimed_until, row.last_error = "failed", None, too_late
        forget_calls(session, {r.delivery_ref for r in late if r.delivery_ref})
    if unknown_calls:  # a WeCom flush prunes what no row waits for (a console one has no calls)
        session.execute(delete(OutboxCall).where(
            OutboxCall.created_at < now - timedelta(seconds=KEEP_CALLS_S),
            ~OutboxCall.ref.in_(select(OutboxMessage.delivery_ref).where(OutboxMessage.status == "inflight")
                                .where(OutboxMessage.delivery_ref.is_not(None)))))
    session.commit()
    if late:
        log.warning("outbox: %d rows of calls older than the duplicate check flagged, not re-sent", len(late))
    return Claim(fresh, resend, len(rows), max((r.id for r in rows), default=after))


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite gives back naive times (stored in the service's time zone)."""
    return value.replace(tzinfo=like.tzinfo) if value.tzinfo is None and like.tzinfo is not None else value


def forget_calls(session: Session, refs: set[str]) -> None:
    """Drop stored calls no inflight row waits for any more (in the caller's transaction)."""
    if not refs:
        return
    waiting = select(OutboxMessage.id).where(OutboxMessage.status == "inflight",
                                             OutboxMessage.delivery_ref == OutboxCall.ref)
    session.execute(delete(OutboxCall).where(OutboxCall.ref.in_(sorted(refs)), ~waiting.exists()))


def mark(session: Session, rows: list[OutboxMessage], commit: bool = True, **values: object) -> None:
    session.execute(update(OutboxMessage).where(OutboxMessage.id.in_([r.id for r in rows])).values(**values)
                    .execution_options(synchronize_session=False))  # the loaded rows are not read again
    if commit:
        session.commit()

