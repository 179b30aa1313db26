"""One WeCom send, as the outbox delivery makes it: a person's rows bundled into messages, the
message/send payload, the rate limits per member, the back-off, and WeCom's duplicate check.

WeCom drops silently what exceeds 30 messages a minute or 1,000 an hour per member; we allow
ourselves fewer (OUR_PER_MINUTE, OUR_PER_HOUR), counted in Redis so that every process shares them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from datetime import datetime, timedelta

import redis

from models.schema import OutboxMessage
from wechat.wecom_api import DUPLICATE_CHECK_MAX_S, MAX_TEXT_BYTES

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 30
BACKOFF_CAP_S = 3600
PER_MINUTE, PER_HOUR = 30, 1000  # WeCom drops silently what exceeds these, per member
# What we allow ourselves per member, leaving room for other senders of the same corp.
OUR_PER_MINUTE, OUR_PER_HOUR = 20, 600
SEPARATOR = "\n\n──────\n\n"

# WeCom's duplicate check (message/send `enable_duplicate_check`): a message whose content a
# person already received within this many seconds is not delivered to them again. Its maximum,
# four hours, because a call whose outcome is unknown is made again once its claim lapses
# (OUTBOX_CLAIM_SECONDS, two minutes, plus the next flush a minute later), after its back-off
# (at most about 1.6 hours over all attempts), or when a standby scheduler takes over a dead one;
# four hours covers each of these with room. The price is small: the same words to the same
# person twice within four hours arrive once, and the outbox's keys (recipient + purpose +
# period) and bundling make such a twin rare.
DUPLICATE_CHECK_S = DUPLICATE_CHECK_MAX_S
# An unknown call is made again only while well inside that window; later, WeCom could no longer
# recognise a twin, so its rows are flagged for the 管理员 (`outbox retry` sends them again).
RESEND_WITHIN_S = DUPLICATE_CHECK_S - 600


class RateLimiter:
    """Messages per member per minute and hour, shared through Redis (or this process).

    Counted in clock minutes and hours, and a message is allowed only while this bucket and the one
    before hold fewer than the limit together: any 60 s (any hour) spans at most two buckets, so no
    member gets more than OUR_PER_MINUTE in any 60 s nor OUR_PER_HOUR in any hour, wherever the
    window starts."""

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client
        self._memory: dict[str, int] = defaultdict(int)

    @staticmethod
    def _keys(userid: str, now: float) -> tuple[str, str, str, str]:
        minute, hour = int(now // 60), int(now // 3600)
        return (f"czk:rl:m:{userid}:{minute}", f"czk:rl:m:{userid}:{minute - 1}",
                f"czk:rl:h:{userid}:{hour}", f"czk:rl:h:{userid}:{hour - 1}")

    def allow(self, userid: str, now: float | None = None) -> bool:
        """Count one message to `userid` if it stays under the limits; False means wait."""
        now = time.time() if now is None else now
        minute, last_minute, hour, last_hour = self._keys(userid, now)
        if self.client is not None:
            try:
                pipe = self.client.pipeline()
                pipe.incr(minute)
                pipe.expire(minute, 180)
                pipe.get(last_minute)
                pipe.incr(hour)
                pipe.expire(hour, 3 * 3600)
                pipe.get(last_hour)
                m, _, pm, h, _, ph = pipe.execute()
                if m + int(pm or 0) > OUR_PER_MINUTE or h + int(ph or 0) > OUR_PER_HOUR:
                    self.client.decr(minute)
                    self.client.decr(hour)
                    return False
                return True
            except redis.RedisError as exc:
                log.warning("Redis unavailable for rate limits (%s); counting in this process", exc)
        mem = self._memory
        if mem[minute] + mem[last_minute] >= OUR_PER_MINUTE or mem[hour] + mem[last_hour] >= OUR_PER_HOUR:
            return False
        mem[minute] += 1
        mem[hour] += 1
        return True

    @staticmethod
    def retry_after(now: datetime) -> datetime:
        """When a member held back now may get a message: once this minute is the one before."""
        ts = now.timestamp()
        return now + timedelta(seconds=60 * (int(ts // 60) + 2) - ts)


def utf8_len(text: str) -> int:
    """The length of `text` in UTF-8 bytes (WeCom's limits are in bytes)."""
    return len(text.encode("utf-8"))


def bundle(rows: list[OutboxMessage], limit: int = MAX_TEXT_BYTES) -> list[tuple[str, list[OutboxMessage]]]:
    """Join one person's due text messages into as few messages as fit the size limit."""
    out: list[tuple[str, list[OutboxMessage]]] = []
    current: list[OutboxMessage] = []
    text = ""
    for row in rows:
        candidate = row.body if not current else text + SEPARATOR + row.body
        if current and utf8_len(candidate) > limit:
            out.append((text, current))
            current, text = [row], row.body
        else:
            current.append(row)
            text = candidate
    if current:
        out.append((text, current))
    return out


def groups(rows: list[OutboxMessage]) -> list[tuple[str, list[OutboxMessage]]]:
    """One person's due rows as messages: text and markdown bundled by type, text cards one each."""
    out: list[tuple[str, list[OutboxMessage]]] = []
    for msgtype in ("text", "markdown"):
        same = [r for r in rows if r.msgtype == msgtype]
        out += bundle(same) if same else []
    out += [(r.body, [r]) for r in rows if r.msgtype not in ("text", "markdown")]
    return out


def payload(msgtype: str, content: str, title: str | None, url: str | None) -> dict:
    """The message/send body for one message type (recipients and agent added by the caller)."""
    if msgtype == "textcard":
        return {"msgtype": "textcard", "textcard": {"title": title or "", "description": content,
                                                     "url": url or "", "btntxt": "详情"}}
    return {"msgtype": msgtype, msgtype: {"content": content}}


def backoff(attempts: int) -> timedelta:
    """Exponential back-off with jitter: 30 s, 60 s, 120 s … capped at an hour."""
    base = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return timedelta(seconds=base * random.uniform(0.5, 1.5))

