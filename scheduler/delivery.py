"""Delivering the outbox: bundle per person, batch identical bodies, back off, never lose a row.

Each row moves pending → sending (claimed, committed) → inflight → sent | failed, or back to
pending with a later attempt. Delivery is at least once and looks exactly once to people:

- Before a WeCom call, its exact payload is stored (`OutboxCall`) in the same commit that marks
  its rows inflight under the call's ref. Every call carries WeCom's duplicate check.
- A process that dies during a call leaves its rows inflight; once their claim lapses, the next
  flush makes the same call again with the stored payload. WeCom drops a message whose content
  that person already received within the check interval, so the person sees it once; if the
  first call never reached WeCom, the second delivers it (nothing lost).
- A row is marked sent only when WeCom accepted it or it was printed to a terminal.
- A long flush extends the claim of the rows it has not finished, so no other flusher takes them.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

import redis
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from bot.service import Service
from bot.wecom_api import DUPLICATE_CHECK_MAX_S, MAX_RECIPIENTS, MAX_TEXT_BYTES, WeComAPI, WeComAPIError
from models.schema import OutboxCall, OutboxMessage, Staff, Student

log = logging.getLogger(__name__)

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
KEEP_CALLS_S = 2 * 86400  # a stored call no row waits for is pruned after this
TOO_LATE = "投递中断超过 4 小时：企业微信是否已收到无法确定；为避免重复未自动重发（可用 outbox retry 重发）"


@dataclass
class _Claim:
    """What one flush took: fresh rows to bundle, and unknown calls (ref → rows) to make again."""

    fresh: list[OutboxMessage]
    resend: dict[str, tuple[dict, list[OutboxMessage]]]


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


def _claim(session: Session, now: datetime, limit: int, claim_s: float, token: str,
           recipients: set[str] | None, unknown_calls: bool) -> _Claim:
    """Take what is due for this flush (committed): fresh rows under `token`, unknown calls under their ref."""
    query = select(OutboxMessage).where(_due(now, unknown_calls))
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
    for row in late:
        row.status, row.claimed_until, row.last_error = "failed", None, TOO_LATE
    if late:
        _forget_calls(session, {r.delivery_ref for r in late if r.delivery_ref})
    if unknown_calls:  # a WeCom flush prunes what no row waits for (a console one has no calls)
        session.execute(delete(OutboxCall).where(
            OutboxCall.created_at < now - timedelta(seconds=KEEP_CALLS_S),
            ~OutboxCall.ref.in_(select(OutboxMessage.delivery_ref).where(OutboxMessage.status == "inflight")
                                .where(OutboxMessage.delivery_ref.is_not(None)))))
    session.commit()
    if late:
        log.warning("outbox: %d rows of calls older than the duplicate check flagged, not re-sent", len(late))
    return _Claim(fresh, resend)


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite gives back naive times (stored in the service's time zone)."""
    return value.replace(tzinfo=like.tzinfo) if value.tzinfo is None and like.tzinfo is not None else value


def _forget_calls(session: Session, refs: set[str]) -> None:
    """Drop stored calls no inflight row waits for any more (in the caller's transaction)."""
    if not refs:
        return
    waiting = select(OutboxMessage.id).where(OutboxMessage.status == "inflight",
                                             OutboxMessage.delivery_ref == OutboxCall.ref)
    session.execute(delete(OutboxCall).where(OutboxCall.ref.in_(sorted(refs)), ~waiting.exists()))


def _mark(session: Session, rows: list[OutboxMessage], commit: bool = True, **values: object) -> None:
    session.execute(update(OutboxMessage).where(OutboxMessage.id.in_([r.id for r in rows])).values(**values))
    if commit:
        session.commit()


def _names(session: Session, userids: set[str]) -> dict[str, str]:
    names = {u: n for u, n in session.execute(select(Staff.wecom_userid, Staff.name).where(
        Staff.wecom_userid.in_(userids)))}
    names.update({u: n for u, n in session.execute(select(Student.wecom_userid, Student.name).where(
        Student.wecom_userid.in_(userids)))})
    return names


class Deliverer:
    """One flush of the outbox through WeCom, or printed to a terminal (the console channel).

    With neither (no WeCom configured and no terminal, e.g. the scheduler of a console-only
    install) nothing can reach anyone, so rows stay pending for a flush that can.
    """

    def __init__(self, service: Service, api: WeComAPI | None, out: TextIO | None = None,
                 redis_client: redis.Redis | None = None, as_push: bool = False) -> None:
        self.service = service
        self.api = api
        self.out = out
        self.as_push = as_push  # printed as pushes in a console chat rather than as a delivery list
        self.limiter = RateLimiter(redis_client)
        self.report = DeliveryReport()
        self.claim_s = float(service.settings.outbox_claim_seconds)
        self.token = "claim:" + uuid.uuid4().hex[:16]  # this flush's claim on its fresh rows
        self._start = time.monotonic()
        self._now = service.now()
        self._extended = self._start
        self._open_refs: set[str] = set()  # unknown calls claimed and not yet made again

    def _current(self) -> datetime:
        """The flush's `now` moved on by the time spent since it began."""
        return self._now + timedelta(seconds=time.monotonic() - self._start)

    def flush(self, now: datetime | None = None, limit: int = 10_000, max_calls: int | None = None,
              recipients: set[str] | None = None) -> DeliveryReport:
        """Deliver what is due (to `recipients` only, if given); `max_calls` stops early (tests use it
        to simulate a crash)."""
        if self.api is None and self.out is None:
            return self.report  # no channel that could send: the rows wait
        self._now = now or self.service.now()
        self._start = self._extended = time.monotonic()
        with self.service.sessions() as session:
            claim = _claim(session, self._now, limit, self.claim_s, self.token, recipients,
                           unknown_calls=self.api is not None)
            self._open_refs = set(claim.resend)
            for ref, (payload, rows) in claim.resend.items():
                if max_calls is not None and self.report.calls >= max_calls:
                    return self.report
                self._extend(session)
                self._open_refs.discard(ref)
                self.report.calls += 1
                self._call(session, ref, payload, rows, resend=True)
            self._flush_fresh(session, claim.fresh, max_calls)
        return self.report

    def _flush_fresh(self, session: Session, rows: list[OutboxMessage], max_calls: int | None) -> None:
        now = self._now
        by_person: dict[str, list[OutboxMessage]] = defaultdict(list)
        for row in rows:
            by_person[row.recipient].append(row)
        calls: dict[tuple[str, str, str, str | None, str | None], list[tuple[str, list[OutboxMessage]]]] = \
            defaultdict(list)
        for person, mine in by_person.items():
            for content, group in _groups(mine):
                channel = "console" if self.api is None or group[0].channel == "console" else "wecom"
                if channel == "console" and self.out is None:
                    _mark(session, group, status="pending", claimed_until=None, delivery_ref=None)
                    continue
                if channel == "wecom" and not self.limiter.allow(person, now.timestamp()):
                    _mark(session, group, status="pending", claimed_until=None, delivery_ref=None,
                          next_attempt_at=now + timedelta(seconds=61))
                    self.report.deferred += len(group)
                    continue
                first = group[0]
                calls[(channel, first.msgtype, content, first.title, first.url)].append((person, group))
        names = _names(session, set(by_person)) if self.out is not None and by_person else {}
        for (channel, msgtype, content, title, url), recipients in calls.items():
            for start in range(0, len(recipients), MAX_RECIPIENTS):
                if max_calls is not None and self.report.calls >= max_calls:
                    return
                chunk = recipients[start:start + MAX_RECIPIENTS]
                self._extend(session)
                if channel == "console":
                    self._print(session, content if not title else f"{title}\n{content}", chunk, names)
                else:
                    self._send(session, _payload(msgtype, content, title, url), chunk)

    def _extend(self, session: Session) -> None:
        """Keep this flush's unfinished rows claimed: once a third of the claim has passed, renew it."""
        if time.monotonic() - self._extended < self.claim_s / 3:
            return
        mine = (OutboxMessage.status == "sending") & (OutboxMessage.delivery_ref == self.token)
        if self._open_refs:
            mine = mine | ((OutboxMessage.status == "inflight")
                           & OutboxMessage.delivery_ref.in_(sorted(self._open_refs)))
        session.execute(update(OutboxMessage).where(mine)
                        .values(claimed_until=self._current() + timedelta(seconds=self.claim_s))
                        .execution_options(synchronize_session=False))
        session.commit()
        self._extended = time.monotonic()

    def _print(self, session: Session, content: str, chunk: list[tuple[str, list[OutboxMessage]]],
               names: dict[str, str]) -> None:
        assert self.out is not None
        for person, group in chunk:
            if self.as_push:
                print(f"【推送】\n{content}\n", file=self.out)
            else:
                print(f"→ {names.get(person, person)}（{person}）：\n{content}\n", file=self.out)
            self.out.flush()
            _mark(session, group, status="sent", sent_at=self._current(), claimed_until=None,
                  delivery_ref="console")
            self.report.printed += len(group)
        self.report.calls += 1

    def _send(self, session: Session, payload: dict, chunk: list[tuple[str, list[OutboxMessage]]]) -> None:
        """Store the call and mark its rows inflight in one commit, then make it."""
        rows = [r for _p, group in chunk for r in group]
        ref = uuid.uuid4().hex[:16]
        agent = self.service.settings.wecom_agent_id or ""
        payload = dict(payload, touser="|".join(p for p, _g in chunk),
                       agentid=int(agent) if agent.isdigit() else agent, safe=0,
                       enable_duplicate_check=1, duplicate_check_interval=DUPLICATE_CHECK_S)
        now = self._current()
        ids = [r.id for r in rows]
        taken = session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending",
                   OutboxMessage.delivery_ref == self.token)
            .values(status="inflight", delivery_ref=ref, claimed_until=now + timedelta(seconds=self.claim_s))
            .execution_options(synchronize_session=False))
        if taken.rowcount != len(ids):
            # Our claim lapsed and another flusher took some of these rows: they are its now.
            session.rollback()
            session.execute(update(OutboxMessage)
                            .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending",
                                   OutboxMessage.delivery_ref == self.token)
                            .values(status="pending", claimed_until=None, delivery_ref=None)
                            .execution_options(synchronize_session=False))
            session.commit()
            log.warning("outbox: claim lost on %d rows; left to the flusher that took them", len(ids))
            return
        session.add(OutboxCall(ref=ref, payload=json.dumps(payload, ensure_ascii=False), created_at=now))
        session.commit()
        self.report.calls += 1
        self._call(session, ref, payload, rows, resend=False)

    def _call(self, session: Session, ref: str, payload: dict, rows: list[OutboxMessage], resend: bool) -> None:
        """Make one stored call and record its outcome (one commit, which also drops the stored call
        once no row waits for it)."""
        assert self.api is not None
        try:
            result = self.api.post("message/send", payload)
        except WeComAPIError as exc:
            self._failed_call(session, ref, rows, exc, resend)
            return
        now = self._current()
        invalid = set(filter(None, str(result.get("invaliduser", "")).split("|")))
        bad = [r for r in rows if r.recipient in invalid]
        good = [r for r in rows if r.recipient not in invalid]
        if good:
            _mark(session, good, commit=False, status="sent", sent_at=now, claimed_until=None, delivery_ref=ref,
                  attempts=OutboxMessage.attempts + 1, last_error=None)
            self.report.sent += len(good)
        if bad:
            _mark(session, bad, commit=False, status="failed", claimed_until=None,
                  attempts=OutboxMessage.attempts + 1, last_error="无效的成员账号（invaliduser）", delivery_ref=ref)
            self.report.failed += len(bad)
            self.report.failures += [f"{r.recipient}: invaliduser" for r in bad]
        _forget_calls(session, {ref})
        session.commit()

    def _failed_call(self, session: Session, ref: str, rows: list[OutboxMessage], exc: WeComAPIError,
                     resend: bool) -> None:
        now = self._current()
        reason = f"{exc.errcode}: {exc.errmsg}" + (f" (HTTP {exc.http_status})" if exc.http_status else "")
        if exc.retryable or (exc.http_status or 0) >= 500:
            # No answer (errcode None): WeCom may have taken the call, and a re-send of a call that
            # was unknown may follow one that was delivered. Either way the rows stay bound to the
            # stored payload (inflight, due again when the back-off ends), so the duplicate check can
            # recognise it. Only a first call WeCom refused with an errcode goes back to pending.
            bound = resend or exc.errcode is None
            delay = backoff(max(r.attempts for r in rows) + 1)
            for row in rows:
                attempts = row.attempts + 1
                if attempts >= MAX_ATTEMPTS:
                    _mark(session, [row], commit=False, status="failed", attempts=attempts, claimed_until=None,
                          last_error=f"重试 {attempts} 次仍失败：{reason}")
                    self.report.failed += 1
                elif bound:
                    _mark(session, [row], commit=False, status="inflight", attempts=attempts,
                          claimed_until=now + delay, last_error=reason)
                    self.report.deferred += 1
                else:
                    _mark(session, [row], commit=False, status="pending", attempts=attempts, claimed_until=None,
                          next_attempt_at=now + delay, last_error=reason)
                    self.report.deferred += 1
        else:
            _mark(session, rows, commit=False, status="failed", attempts=OutboxMessage.attempts + 1,
                  claimed_until=None, last_error=reason)
            self.report.failed += len(rows)
            self.report.failures += [f"{r.recipient}: {reason}" for r in rows]
        _forget_calls(session, {ref})
        session.commit()


def retry_failed(session: Session, ids: list[int] | None = None) -> int:
    """Queue failed rows (all, or these ids) again as pending with their attempts reset; how many."""
    stmt = update(OutboxMessage).where(OutboxMessage.status == "failed")
    if ids:
        stmt = stmt.where(OutboxMessage.id.in_(ids))
    done = session.execute(stmt.values(status="pending", attempts=0, next_attempt_at=None, claimed_until=None)
                           .execution_options(synchronize_session=False))
    session.commit()
    return done.rowcount


def show_pushes(service: Service, userid: str, out: TextIO) -> int:
    """In a console chat without WeCom: print the pushes due to `userid` (and count them as sent)."""
    if service.settings.wecom_enabled and service.settings.wecom_secret:
        return 0  # WeCom delivers them
    return Deliverer(service, None, out, as_push=True).flush(recipients={userid}).printed


def make_deliverer(service: Service, out: TextIO | None = None) -> Deliverer:
    """WeCom when configured; otherwise the console channel prints what it would send."""
    client = redis.Redis.from_url(service.settings.redis_url, socket_connect_timeout=0.5,
                                  socket_timeout=1) if service.settings.redis_url else None
    api = WeComAPI(service.settings, client) if service.settings.wecom_enabled and \
        service.settings.wecom_secret else None
    return Deliverer(service, api, out, client)
