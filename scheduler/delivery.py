"""Delivering the outbox: bundle per person, batch identical bodies, back off, never lose a row.

Each row moves pending → sending (claimed, committed) → sent | failed, or back to
pending with a later attempt. The status after each WeCom call is committed before
the next call, so a process that dies mid-batch leaves at most the one call in flight
unrecorded; its rows stay `sending` until their claim lapses and are then retried
(a duplicate of that one call is possible, a lost message is not).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

import redis
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bot.service import Service
from bot.wecom_api import MAX_RECIPIENTS, MAX_TEXT_BYTES, WeComAPI, WeComAPIError
from models.schema import OutboxMessage, Staff, Student

log = logging.getLogger(__name__)

CLAIM_S = 120  # a claimed row not finished within this is taken up again
MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 30
BACKOFF_CAP_S = 3600
PER_MINUTE, PER_HOUR = 30, 1000  # WeCom drops silently what exceeds these, per member
# What we allow ourselves per member, leaving room for other senders of the same corp.
OUR_PER_MINUTE, OUR_PER_HOUR = 20, 600
SEPARATOR = "\n\n──────\n\n"


@dataclass
class DeliveryReport:
    sent: int = 0
    calls: int = 0
    deferred: int = 0
    failed: int = 0
    printed: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"sent {self.sent} in {self.calls} calls, printed {self.printed}, "
                f"deferred {self.deferred}, failed {self.failed}")


class RateLimiter:
    """Messages per member per minute and hour, shared through Redis (or this process)."""

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client
        self._memory: dict[str, int] = defaultdict(int)

    def _keys(self, userid: str, now: float) -> tuple[str, str]:
        return f"czk:rl:m:{userid}:{int(now // 60)}", f"czk:rl:h:{userid}:{int(now // 3600)}"

    def allow(self, userid: str, now: float | None = None) -> bool:
        """Count one message to `userid` if it stays under the limits; False means wait."""
        now = time.time() if now is None else now
        minute, hour = self._keys(userid, now)
        if self.client is not None:
            try:
                pipe = self.client.pipeline()
                pipe.incr(minute)
                pipe.expire(minute, 120)
                pipe.incr(hour)
                pipe.expire(hour, 7200)
                m, _, h, _ = pipe.execute()
                if m > OUR_PER_MINUTE or h > OUR_PER_HOUR:
                    self.client.decr(minute)
                    self.client.decr(hour)
                    return False
                return True
            except redis.RedisError as exc:
                log.warning("Redis unavailable for rate limits (%s); counting in this process", exc)
        if self._memory[minute] >= OUR_PER_MINUTE or self._memory[hour] >= OUR_PER_HOUR:
            return False
        self._memory[minute] += 1
        self._memory[hour] += 1
        return True


def utf8_len(text: str) -> int:
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


def _groups(rows: list[OutboxMessage]) -> list[tuple[str, list[OutboxMessage]]]:
    """One person's due rows as messages: text and markdown bundled by type, text cards one each."""
    out: list[tuple[str, list[OutboxMessage]]] = []
    for msgtype in ("text", "markdown"):
        same = [r for r in rows if r.msgtype == msgtype]
        out += bundle(same) if same else []
    out += [(r.body, [r]) for r in rows if r.msgtype not in ("text", "markdown")]
    return out


def _payload(msgtype: str, content: str, title: str | None, url: str | None) -> dict:
    """The message/send body for one message type (recipients and agent added by the caller)."""
    if msgtype == "textcard":
        return {"msgtype": "textcard", "textcard": {"title": title or "", "description": content,
                                                     "url": url or "", "btntxt": "详情"}}
    return {"msgtype": msgtype, msgtype: {"content": content}}


def backoff(attempts: int) -> timedelta:
    """Exponential back-off with jitter: 30 s, 60 s, 120 s … capped at an hour."""
    base = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return timedelta(seconds=base * random.uniform(0.5, 1.5))


UNKNOWN = "投递中断：企业微信是否已收到无法确定；为避免重复，未自动重发"


def _claim(session: Session, now: datetime, limit: int) -> list[OutboxMessage]:
    # A call was under way when its process died: WeCom may or may not have taken it.
    # Re-sending could deliver it twice, so it is flagged for the 管理员 instead.
    session.execute(update(OutboxMessage)
                    .where(OutboxMessage.status == "inflight", OutboxMessage.claimed_until < now)
                    .values(status="failed", last_error=UNKNOWN, claimed_until=None))
    due = or_(
        (OutboxMessage.status == "pending")
        & (OutboxMessage.next_attempt_at.is_(None) | (OutboxMessage.next_attempt_at <= now)),
        (OutboxMessage.status == "sending") & (OutboxMessage.claimed_until < now),
    )
    query = select(OutboxMessage).where(due).order_by(OutboxMessage.id).limit(limit)
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    for row in rows:
        row.status = "sending"
        row.claimed_until = now + timedelta(seconds=CLAIM_S)
    session.commit()
    return rows


def _mark(session: Session, rows: list[OutboxMessage], **values: object) -> None:
    session.execute(update(OutboxMessage).where(OutboxMessage.id.in_([r.id for r in rows])).values(**values))
    session.commit()


def _names(session: Session, userids: set[str]) -> dict[str, str]:
    names = {u: n for u, n in session.execute(select(Staff.wecom_userid, Staff.name).where(
        Staff.wecom_userid.in_(userids)))}
    names.update({u: n for u, n in session.execute(select(Student.wecom_userid, Student.name).where(
        Student.wecom_userid.in_(userids)))})
    return names


class Deliverer:
    """One flush of the outbox through WeCom (or printed, for the console channel)."""

    def __init__(self, service: Service, api: WeComAPI | None, out: TextIO | None = None,
                 redis_client: redis.Redis | None = None) -> None:
        self.service = service
        self.api = api
        self.out = out
        self.limiter = RateLimiter(redis_client)
        self.report = DeliveryReport()

    def flush(self, now: datetime | None = None, limit: int = 10_000, max_calls: int | None = None) -> DeliveryReport:
        """Deliver what is due; `max_calls` stops early (tests use it to simulate a crash)."""
        now = now or self.service.now()
        with self.service.sessions() as session:
            rows = _claim(session, now, limit)
            if not rows:
                return self.report
            by_person: dict[str, list[OutboxMessage]] = defaultdict(list)
            for row in rows:
                by_person[row.recipient].append(row)
            calls: dict[tuple[str, str, str, str | None, str | None], list[tuple[str, list[OutboxMessage]]]] = \
                defaultdict(list)
            for person, mine in by_person.items():
                for content, group in _groups(mine):
                    if self.api is not None and not self.limiter.allow(person, now.timestamp()):
                        _mark(session, group, status="pending", claimed_until=None,
                              next_attempt_at=now + timedelta(seconds=61))
                        self.report.deferred += len(group)
                        continue
                    channel = "console" if self.api is None or group[0].channel == "console" else "wecom"
                    first = group[0]
                    calls[(channel, first.msgtype, content, first.title, first.url)].append((person, group))
            names = _names(session, set(by_person)) if self.out is not None else {}
            for (channel, msgtype, content, title, url), recipients in calls.items():
                for start in range(0, len(recipients), MAX_RECIPIENTS):
                    if max_calls is not None and self.report.calls >= max_calls:
                        return self.report
                    chunk = recipients[start:start + MAX_RECIPIENTS]
                    if channel == "console":
                        self._print(session, content if not title else f"{title}\n{content}", chunk, names, now)
                    else:
                        self._send(session, _payload(msgtype, content, title, url), chunk, now)
        return self.report

    def _print(self, session: Session, content: str, chunk: list[tuple[str, list[OutboxMessage]]],
               names: dict[str, str], now: datetime) -> None:
        out = self.out
        for person, group in chunk:
            if out is not None:
                print(f"→ {names.get(person, person)}（{person}）：\n{content}\n", file=out)
            _mark(session, group, status="sent", sent_at=now, claimed_until=None, delivery_ref="console")
            self.report.printed += len(group)
        self.report.calls += 1

    def _send(self, session: Session, payload: dict, chunk: list[tuple[str, list[OutboxMessage]]],
              now: datetime) -> None:
        assert self.api is not None
        rows = [r for _p, group in chunk for r in group]
        ref = uuid.uuid4().hex[:16]
        self.report.calls += 1
        # Committed before the call: if this process dies now, these rows are never sent twice.
        _mark(session, rows, status="inflight", delivery_ref=ref)
        agent = self.service.settings.wecom_agent_id or ""
        payload = dict(payload, touser="|".join(p for p, _g in chunk),
                       agentid=int(agent) if agent.isdigit() else agent, safe=0)
        try:
            result = self.api.post("message/send", payload)
        except WeComAPIError as exc:
            self._failed_call(session, rows, exc, now)
            return
        invalid = set(filter(None, str(result.get("invaliduser", "")).split("|")))
        bad = [r for r in rows if r.recipient in invalid]
        good = [r for r in rows if r.recipient not in invalid]
        if good:
            _mark(session, good, status="sent", sent_at=now, claimed_until=None, delivery_ref=ref,
                  attempts=OutboxMessage.attempts + 1, last_error=None)
            self.report.sent += len(good)
        if bad:
            _mark(session, bad, status="failed", claimed_until=None, attempts=OutboxMessage.attempts + 1,
                  last_error="无效的成员账号（invaliduser）", delivery_ref=ref)
            self.report.failed += len(bad)
            self.report.failures += [f"{r.recipient}: invaliduser" for r in bad]

    def _failed_call(self, session: Session, rows: list[OutboxMessage], exc: WeComAPIError, now: datetime) -> None:
        reason = f"{exc.errcode}: {exc.errmsg}" + (f" (HTTP {exc.http_status})" if exc.http_status else "")
        if exc.retryable or (exc.http_status or 0) >= 500:
            for row in rows:
                attempts = row.attempts + 1
                if attempts >= MAX_ATTEMPTS:
                    _mark(session, [row], status="failed", attempts=attempts, claimed_until=None,
                          last_error=f"重试 {attempts} 次仍失败：{reason}")
                    self.report.failed += 1
                else:
                    _mark(session, [row], status="pending", attempts=attempts, claimed_until=None,
                          next_attempt_at=now + backoff(attempts), last_error=reason)
                    self.report.deferred += 1
            return
        _mark(session, rows, status="failed", attempts=OutboxMessage.attempts + 1, claimed_until=None,
              last_error=reason)
        self.report.failed += len(rows)
        self.report.failures += [f"{r.recipient}: {reason}" for r in rows]


def make_deliverer(service: Service, out: TextIO | None = None) -> Deliverer:
    """WeCom when configured; otherwise the console channel prints what it would send."""
    client = redis.Redis.from_url(service.settings.redis_url, socket_connect_timeout=0.5,
                                  socket_timeout=1) if service.settings.redis_url else None
    api = WeComAPI(service.settings, client) if service.settings.wecom_enabled and \
        service.settings.wecom_secret else None
    return Deliverer(service, api, out, client)
