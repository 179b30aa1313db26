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

Several calls are in flight at once (OUTBOX_CONCURRENCY threads, 24: at 30–100 ms a call, one
after another would take 8 to 25 minutes for a college's 15,000 Monday cards), under the app's
cap on calls a minute (WECOM_CALLS_PER_MINUTE, 9,000, below WeCom's 10,000; `wechat.wecom_api`).
The worker threads only make HTTP calls; the database is worked by the flushing thread alone (one
session): it stores a few calls and marks their rows inflight in one commit before handing them
to the threads, and records the outcomes of the calls that have finished in one commit after.
A flush claims the due rows a batch at a time (by ascending id) until none is left.

Rows of channel "mp" (an openid) take the same road through the Official Account's API, one row a
call (text rows bundled), with its own rules in scheduler/mp_delivery.py: a template message or a
customer-service one within the 48-hour window, and, WeChat having no duplicate check there, a call
whose outcome is unknown is never made again: its rows fail with that reason.

Here the flush (plan the calls, store them, hand them out, record their outcomes); which rows are due
and how they are claimed in scheduler/outbox_claim.py; what one send is (bundles, payload, rate limits
per member, back-off, the duplicate check) in scheduler/sending.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

import redis
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core import metrics
from core.render import render
from models.schema import OutboxCall, OutboxMessage, Staff, Student
from models.service import Service
from scheduler.mp_delivery import fail_unconfigured, fail_unknown, mp_failed, plan_mp
from scheduler.outbox_claim import claim_due, forget_calls, mark
from scheduler.sending import DUPLICATE_CHECK_S, MAX_ATTEMPTS, RateLimiter, backoff, groups, payload
from wechat.mp_api import MpAPI, endpoint_of
from wechat.wecom_api import MAX_RECIPIENTS, WeComAPI, WeComAPIError

log = logging.getLogger(__name__)

CLAIM_BATCH = 2000  # rows a flush claims at a time


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


def _names(session: Session, userids: set[str]) -> dict[str, str]:
    names = {u: n for u, n in session.execute(select(Staff.wecom_userid, Staff.name).where(
        Staff.wecom_userid.in_(userids)))}
    names.update({u: n for u, n in session.execute(select(Student.wecom_userid, Student.name).where(
        Student.wecom_userid.in_(userids)))})
    return names


@dataclass
class _Call:
    """One message/send (or, channel "mp", one Official Account message): its payload (stored before it
    is made), the rows it carries, whether it is an unknown call made again; `ref` is None until it is
    stored."""

    payload: dict
    rows: list[OutboxMessage]
    ref: str | None = None
    resend: bool = False
    channel: str = "wecom"

    def people(self) -> set[str]:
        return {r.recipient for r in self.rows}


class Deliverer:
    """One flush of the outbox through WeCom and the Official Account (`mp`), or printed to a
    terminal (the console channel).

    With none of them (nothing configured and no terminal, e.g. the scheduler of a console-only
    install) nothing can reach anyone, so rows stay pending for a flush that can.
    """

    def __init__(self, service: Service, api: WeComAPI | None, out: TextIO | None = None,
                 redis_client: redis.Redis | None = None, as_push: bool = False,
                 concurrency: int | None = None, mp: MpAPI | None = None) -> None:
        self.service = service
        self.api = api
        self.mp = mp
        self.out = out
        self.as_push = as_push  # printed as pushes in a console chat rather than as a delivery list
        self.limiter = RateLimiter(redis_client)
        self.report = DeliveryReport()
        self.claim_s = float(service.settings.outbox_claim_seconds)
        self.concurrency = max(1, concurrency or service.settings.outbox_concurrency)
        self.window = 2 * self.concurrency  # calls stored and handed out: some wait while the others run
        self.token = "claim:" + uuid.uuid4().hex[:16]  # this flush's claim on its fresh rows
        self._start = time.monotonic()
        self._now = service.now()
        self._extended = self._start
        self._open_refs: set[str] = set()  # stored calls claimed or handed out and not yet recorded
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[Future, _Call] = {}
        self._busy: defaultdict[str, int] = defaultdict(int)  # people in calls running → how many calls
        self._max_calls: int | None = None

    def _current(self) -> datetime:
        """The flush's `now` moved on by the time spent since it began."""
        return self._now + timedelta(seconds=time.monotonic() - self._start)

    def flush(self, now: datetime | None = None, limit: int = CLAIM_BATCH, max_calls: int | None = None,
              recipients: set[str] | None = None) -> DeliveryReport:
        """Deliver what is due (to `recipients` only, if given), claiming `limit` rows at a time;
        `max_calls` stops early (tests use it to simulate a crash)."""
        if self.api is None and self.mp is None and self.out is None:
            return self.report  # no channel that could send: the rows wait
        self._now = now or self.service.now()
        self._start = self._extended = time.monotonic()
        self._max_calls = max_calls
        with self.service.sessions() as session:
            try:
                after = 0
                while not self._enough():
                    claim = claim_due(session, self._current(), limit, self.claim_s, self.token, recipients,
                                   unknown_calls=self.api is not None or self.mp is not None, after=after)
                    after = claim.last_id
                    calls = self._unknown(session, claim.resend)
                    calls += self._plan(session, claim.fresh)
                    self._run(session, calls)
                    if claim.taken < limit:
                        break
                while self._running:
                    self._collect(session, block=True)
            finally:
                if self._pool is not None:
                    # Calls not yet started stay inflight with their stored payload: the next flush makes them.
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = None
        return self.report

    def _enough(self) -> bool:
        return self._max_calls is not None and self.report.calls >= self._max_calls

    def _unknown(self, session: Session, resend: dict[str, tuple[dict, list[OutboxMessage]]]) -> list[_Call]:
        """Calls whose outcome is unknown: WeCom ones made again (its duplicate check recognises a
        twin); Official Account ones, which have no such check, fail with that reason. Without WeCom
        configured, its calls stay inflight for a flush that has it."""
        calls = []
        for ref, (body, rows) in resend.items():
            if rows[0].channel == "mp":
                fail_unknown(session, rows, self.report)
            elif self.api is not None:
                self._open_refs.add(ref)
                calls.append(_Call(body, rows, ref, resend=True))
        session.commit()
        return calls

    def _plan(self, session: Session, rows: list[OutboxMessage]) -> list[_Call]:
        """Fresh rows as calls: bundled per person, identical bodies batched; console ones printed now."""
        now = self._current()
        by_person: dict[str, list[OutboxMessage]] = defaultdict(list)
        for row in rows:
            by_person[row.recipient].append(row)
        calls: dict[tuple[str, str, str, str | None, str | None], list[tuple[str, list[OutboxMessage]]]] = \
            defaultdict(list)
        held: list[OutboxMessage] = []
        out: list[_Call] = self._plan_mp(session, by_person, now)
        for person, mine in by_person.items():
            for content, group in groups(mine):
                channel = "console" if self.api is None or group[0].channel == "console" else "wecom"
                if channel == "console" and self.out is None:
                    mark(session, group, commit=False, status="pending", claimed_until=None, delivery_ref=None)
                    continue
                if channel == "wecom" and not self.limiter.allow(person, now.timestamp()):
                    held += group
                    continue
                first = group[0]
                calls[(channel, first.msgtype, content, first.title, first.url)].append((person, group))
        if held:
            mark(session, held, commit=False, status="pending", claimed_until=None, delivery_ref=None,
                  next_attempt_at=RateLimiter.retry_after(now))
            self.report.deferred += len(held)
        session.commit()
        names = _names(session, set(by_person)) if self.out is not None and by_person else {}
        agent = self.service.settings.wecom_agent_id or ""
        for (channel, msgtype, content, title, url), recipients in calls.items():
            for start in range(0, len(recipients), MAX_RECIPIENTS):
                chunk = recipients[start:start + MAX_RECIPIENTS]
                if channel == "console":
                    if self._enough():
                        break
                    self._extend(session)
                    self._print(session, content if not title else f"{title}\n{content}", chunk, names)
                    continue
                body = dict(payload(msgtype, content, title, url), touser="|".join(p for p, _g in chunk),
                            agentid=int(agent) if agent.isdigit() else agent, safe=0,
                            enable_duplicate_check=1, duplicate_check_interval=DUPLICATE_CHECK_S)
                out.append(_Call(body, [r for _p, group in chunk for r in group]))
        return out

    def _plan_mp(self, session: Session, by_person: dict[str, list[OutboxMessage]], now: datetime) -> list[_Call]:
        """Take the "mp" rows out of `by_person` and plan them (scheduler/mp_delivery.py). Without the
        Official Account configured they are printed by a console-only flush, else failed with that reason."""
        mine: dict[str, list[OutboxMessage]] = {}
        for person in list(by_person):
            rows = [r for r in by_person[person] if r.channel == "mp"]
            if rows and (self.mp is not None or self.api is not None):
                mine[person] = rows
                by_person[person] = [r for r in by_person[person] if r.channel != "mp"]
                if not by_person[person]:
                    del by_person[person]
        if not mine:
            return []
        if self.mp is None:
            fail_unconfigured(session, [r for rows in mine.values() for r in rows], self.report)
            return []
        plan = plan_mp(session, self.service.settings, mine, self.limiter, now)
        if plan.held:
            mark(session, plan.held, commit=False, status="pending", claimed_until=None, delivery_ref=None,
                 next_attempt_at=RateLimiter.retry_after(now))
            self.report.deferred += len(plan.held)
        self.report.failed += len(plan.unreachable)
        self.report.failures += [f"{r.recipient}: no template, window closed" for r in plan.unreachable]
        return [_Call(body, rows, channel="mp") for body, rows in plan.calls]

    # ── calls in flight ─────────────────────────────────────────────────────

    def _run(self, session: Session, calls: list[_Call]) -> None:
        """Hand the calls out to the threads, a few at a time, recording outcomes as they come. A
        person's calls go one after another, in order (an unknown call made again before new ones)."""
        waiting = deque(calls)
        while waiting and not self._enough():
            room = self.window - len(self._running)
            if self._max_calls is not None:
                room = min(room, self._max_calls - self.report.calls)
            batch = self._next(waiting, room) if room > 0 else []
            if not batch:
                self._collect(session, block=True)
                continue
            self._extend(session)
            for call in self._store(session, batch):
                self._hand_out(call)
            self._collect(session, block=False)
        if waiting:  # stopped early: unknown calls stay inflight, fresh rows stay claimed (both lapse)
            self._open_refs -= {c.ref for c in waiting if c.ref}

    def _next(self, waiting: deque[_Call], room: int) -> list[_Call]:
        """Up to `room` waiting calls none of whose people is in a call still running or before them."""
        busy = set(self._busy)
        batch: list[_Call] = []
        skipped: list[_Call] = []
        while waiting and len(batch) < room and len(skipped) < 4 * self.window:
            call = waiting.popleft()
            people = call.people()
            (skipped if people & busy else batch).append(call)
            busy |= people
        waiting.extendleft(reversed(skipped))
        return batch

    def _store(self, session: Session, calls: list[_Call]) -> list[_Call]:
        """Store each fresh call and mark its rows inflight under its ref, in one commit for them all
        (calls made again are stored already). A call whose rows another flusher has taken (our claim
        lapsed) is dropped: they are its now."""
        while True:
            now = self._current()
            lost: _Call | None = None
            for call in calls:
                if call.resend:
                    continue
                call.ref = uuid.uuid4().hex[:16]
                ids = [r.id for r in call.rows]
                taken = session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending",
                           OutboxMessage.delivery_ref == self.token)
                    .values(status="inflight", delivery_ref=call.ref,
                            claimed_until=now + timedelta(seconds=self.claim_s))
                    .execution_options(synchronize_session=False))
                if taken.rowcount != len(ids):
                    lost = call
                    break
                session.add(OutboxCall(ref=call.ref, payload=json.dumps(call.payload, ensure_ascii=False),
                                       created_at=now))
            if lost is None:
                session.commit()
                return calls
            session.rollback()
            ids = [r.id for r in lost.rows]
            session.execute(update(OutboxMessage)
                            .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "sending",
                                   OutboxMessage.delivery_ref == self.token)
                            .values(status="pending", claimed_until=None, delivery_ref=None)
                            .execution_options(synchronize_session=False))
            session.commit()
            log.warning("outbox: claim lost on %d rows; left to the flusher that took them", len(ids))
            calls = [c for c in calls if c is not lost]

    def _hand_out(self, call: _Call) -> None:
        assert call.ref is not None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox")
        self._open_refs.add(call.ref)
        for person in call.people():
            self._busy[person] += 1
        self.report.calls += 1
        if call.channel == "mp":
            assert self.mp is not None
            future = self._pool.submit(self.mp.post, endpoint_of(call.payload), call.payload)
        else:
            assert self.api is not None
            future = self._pool.submit(self.api.post, "message/send", call.payload)
        self._running[future] = call

    def _collect(self, session: Session, block: bool) -> None:
        """Record the outcome of every call that has finished, in one commit."""
        if not self._running:
            return
        done, _ = wait(list(self._running), timeout=1.0 if block else 0, return_when=FIRST_COMPLETED)
        if not done:
            self._extend(session)
            return
        now = self._current()
        sent: list[OutboxMessage] = []
        invalid: list[OutboxMessage] = []
        finished: set[str] = set()  # calls no row of which waits any more
        shared: set[str] = set()  # calls made again: other rows (not claimed by us) may still wait for them
        for future in done:
            call = self._running.pop(future)
            assert call.ref is not None
            for person in call.people():
                self._busy[person] -= 1
                if not self._busy[person]:
                    del self._busy[person]
            self._open_refs.discard(call.ref)
            (shared if call.resend else finished).add(call.ref)
            if call.channel == "mp":
                try:
                    future.result()
                except Exception as exc:  # WeChat's refusal, no answer, or a bug below us: mp_failed tells
                    mp_failed(session, call.rows, exc, now, self.report, self.service.settings.redis_url)
                else:
                    sent += call.rows
                continue
            try:
                result = future.result()
            except WeComAPIError as exc:
                if self._failed_call(session, call, exc, now):
                    finished.discard(call.ref)
                    shared.add(call.ref)
                continue
            except Exception as exc:  # a bug below us: the outcome is unknown, so keep the call bound
                log.exception("outbox: a WeCom call raised")
                self._failed_call(session, call, WeComAPIError(None, type(exc).__name__), now)
                finished.discard(call.ref)
                shared.add(call.ref)
                continue
            refused = set(filter(None, str(result.get("invaliduser", "")).split("|")))
            for row in call.rows:
                (invalid if row.recipient in refused else sent).append(row)
        if sent:
            mark(session, sent, commit=False, status="sent", sent_at=now, claimed_until=None,
                  attempts=OutboxMessage.attempts + 1, last_error=None)
            self.report.sent += len(sent)
        if invalid:
            mark(session, invalid, commit=False, status="failed", claimed_until=None,
                  attempts=OutboxMessage.attempts + 1, last_error=render("errors/delivery_invalid_user.txt"))
            self.report.failed += len(invalid)
            self.report.failures += [f"{r.recipient}: invaliduser" for r in invalid]
        if finished:  # every row of a fresh call is ours and none is inflight now
            session.execute(delete(OutboxCall).where(OutboxCall.ref.in_(sorted(finished))))
        forget_calls(session, shared)
        session.commit()

    def _failed_call(self, session: Session, call: _Call, exc: WeComAPIError, now: datetime) -> bool:
        """Record a failed call (without committing); True if rows stay bound to its stored payload."""
        metrics.delivery_error(self.service.settings.redis_url, exc.errcode)
        rows = call.rows
        reason = f"{exc.errcode}: {exc.errmsg}" + (f" (HTTP {exc.http_status})" if exc.http_status else "")
        bound = False
        if exc.retryable or (exc.http_status or 0) >= 500:
            # No answer (errcode None): WeCom may have taken the call, and a re-send of a call that
            # was unknown may follow one that was delivered. Either way the rows stay bound to the
            # stored payload (inflight, due again when the back-off ends), so the duplicate check can
            # recognise it. Only a first call WeCom refused with an errcode goes back to pending.
            bound = call.resend or exc.errcode is None
            delay = backoff(max(r.attempts for r in rows) + 1)
            for row in rows:
                attempts = row.attempts + 1
                if attempts >= MAX_ATTEMPTS:
                    mark(session, [row], commit=False, status="failed", attempts=attempts, claimed_until=None,
                          last_error=render("errors/delivery_gave_up.txt", attempts=attempts, reason=reason))
                    self.report.failed += 1
                elif bound:
                    mark(session, [row], commit=False, status="inflight", attempts=attempts,
                          claimed_until=now + delay, last_error=reason)
                    self.report.deferred += 1
                else:
                    mark(session, [row], commit=False, status="pending", attempts=attempts, claimed_until=None,
                          next_attempt_at=now + delay, last_error=reason)
                    self.report.deferred += 1
        else:
            mark(session, rows, commit=False, status="failed", attempts=OutboxMessage.attempts + 1,
                  claimed_until=None, last_error=reason)
            self.report.failed += len(rows)
            self.report.failures += [f"{r.recipient}: {reason}" for r in rows]
        return bound

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
            mark(session, group, status="sent", sent_at=self._current(), claimed_until=None,
                  delivery_ref="console")
            self.report.printed += len(group)
        self.report.calls += 1


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
    """WeCom and the Official Account when configured (MP_APP_ID and MP_APP_SECRET); with neither, the
    console channel prints what it would send."""
    settings = service.settings
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5,
                                  socket_timeout=1) if settings.redis_url else None
    api = WeComAPI(settings, client) if settings.wecom_enabled and settings.wecom_secret else None
    mp = MpAPI(settings, client) if settings.mp_app_id and settings.mp_app_secret else None
    return Deliverer(service, api, out, client, mp=mp)
