"""Official Account followers as WeChat reports them: when each last wrote, whether they still follow.

WeChat accepts a customer-service message (`message/custom/send`) only within 48 hours of the
follower's last message to the account, so every message a follower sends is noted here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.outbox import dialect_insert
from models.schema import MpFollower

CUSTOM_WINDOW = timedelta(hours=48)


def note_follower(session: Session, openid: str, now: datetime, *, wrote: bool = True,
                  following: bool = True) -> None:
    """Record that `openid` wrote to the account (or followed, or left) at `now`; the caller commits."""
    values: dict[str, object] = {"openid": openid, "following": following}
    if wrote:
        values["last_message_at"] = now
    stmt = dialect_insert(session, MpFollower).values(**values)
    session.execute(stmt.on_conflict_do_update(index_elements=["openid"],
                                               set_={k: v for k, v in values.items() if k != "openid"}))


def last_messages(session: Session, openids: Iterable[str]) -> dict[str, MpFollower]:
    """openid → what we know of that follower (absent: never wrote)."""
    wanted = sorted(set(openids))
    out: dict[str, MpFollower] = {}
    for start in range(0, len(wanted), 900):
        for row in session.scalars(select(MpFollower).where(MpFollower.openid.in_(wanted[start:start + 900]))):
            out[row.openid] = row
    return out


def in_custom_window(follower: MpFollower | None, now: datetime) -> bool:
    """Whether WeChat would accept a customer-service message to this follower now."""
    if follower is None or not follower.following or follower.last_message_at is None:
        return False
    last = follower.last_message_at
    if last.tzinfo is None:  # SQLite hands back naive UTC
        last = last.replace(tzinfo=now.tzinfo)
    return now - last < CUSTOM_WINDOW
