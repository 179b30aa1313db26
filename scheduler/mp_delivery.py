"""Outbox rows of channel "mp" (recipient = an openid): what the Official Account is sent, and what
its answers mean for the rows. The flush itself (claims, stored calls, threads) is scheduler/delivery.py's.

Which message a row becomes:

- A **template message** (`message/template/send`) when its purpose has a template id:
  "student_weekly_card" → MP_TEMPLATE_WEEKLY, any other purpose → MP_TEMPLATE_NOTICE. One row, one
  call. The template's data keys, filled from the row's body (its lines):
    - `first`: the first line (the greeting: whose card, which week);
    - `keyword1`: the second line (the main fact, e.g. the total and value added), or the first;
    - `keyword2`: when it was sent (templates/push/mp_sent_at.txt);
    - `remark`: every further line (the records, what to do, the signature).
  Its link (`url`) is the row's url, if it has one.
- Otherwise a **customer-service text message** (`message/custom/send`), which WeChat accepts only
  within 48 hours of the follower's last message (`models.followers.in_custom_window`); one person's
  due text rows are bundled into as few messages as fit, as WeCom's are.
- Otherwise nothing can reach the follower: the row fails with the reason
  (templates/errors/delivery_mp_window_closed.txt), shown by `outbox failed`; `outbox retry` sends
  it again, e.g. once a template id is set or the follower has written.

What an answer means: 40001/42001 were refreshed and retried by the client already; 43004 (no longer
following), 45015 (the window closed meanwhile), 45047 (over the customer-service quota) and every
other errcode fail the row with the reason; no answer (connection refused, HTTP 5xx) and 45009/-1
back off and try again, as WeCom rows do. WeChat has no duplicate check here, so a call whose outcome
is unknown (sent and no answer came, or its process died during it) is never made again blindly: its
rows fail with a reason saying so, and the 管理员 decides (`outbox retry`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from core import metrics
from core.config import Settings
from core.render import render
from models.followers import in_custom_window, last_messages, note_follower
from models.schema import OutboxMessage
from scheduler.outbox_claim import forget_calls, mark
from scheduler.sending import MAX_ATTEMPTS, RateLimiter, backoff, bundle
from wechat.mp_api import (
    MAX_TEXT_BYTES,
    NOT_FOLLOWING,
    OUT_OF_WINDOW,
    OVER_CUSTOM_QUOTA,
    MpAPIError,
    template_payload,
    text_payload,
)

if TYPE_CHECKING:
    from scheduler.delivery import DeliveryReport

log = logging.getLogger(__name__)

WEEKLY_PURPOSE = "student_weekly_card"
BAD_TEMPLATE = 40037  # the template id is not one of the account's
REASONS = {  # errcode → the reason a 管理员 reads (templates/errors/)
    NOT_FOLLOWING: "errors/delivery_mp_unfollowed.txt",
    OUT_OF_WINDOW: "errors/delivery_mp_window_closed.txt",
    OVER_CUSTOM_QUOTA: "errors/delivery_mp_quota.txt",
    BAD_TEMPLATE: "errors/delivery_mp_bad_template.txt",
}


def template_for(settings: Settings, purpose: str) -> str | None:
    """The template id a row of this purpose is sent with (None: a customer-service message)."""
    return settings.mp_template_weekly if purpose == WEEKLY_PURPOSE else settings.mp_template_notice


def template_data(body: str, sent_at: datetime, url: str | None = None) -> dict[str, str]:
    """A row's body as the template's first / keyword1 / keyword2 / remark (see the module's docstring);
    a last line carrying the row's `url` is left out: the template message opens that page itself."""
    lines = [line for line in body.splitlines() if line.strip()] or [""]
    if url and len(lines) > 1 and lines[-1].rstrip().endswith(url):
        lines.pop()
    return {"first": lines[0], "keyword1": lines[1] if len(lines) > 1 else lines[0],
            "keyword2": render("push/mp_sent_at.txt", at=sent_at), "remark": "\n".join(lines[2:])}


def _text(row: OutboxMessage) -> str:
    return f"{row.title}\n{row.body}" if row.title else row.body


@dataclass
class MpPlan:
    """One flush's fresh "mp" rows as calls (payload, rows), rows held back by the rate limits, and
    rows no message can reach now."""

    calls: list[tuple[dict[str, Any], list[OutboxMessage]]] = field(default_factory=list)
    held: list[OutboxMessage] = field(default_factory=list)
    unreachable: list[OutboxMessage] = field(default_factory=list)


def plan_mp(session: Session, settings: Settings, by_person: dict[str, list[OutboxMessage]],
            limiter: RateLimiter, now: datetime) -> MpPlan:
    """Template messages one per row; text rows bundled per person while their window is open."""
    plan = MpPlan()
    followers = last_messages(session, by_person)
    for openid, rows in by_person.items():
        texts: list[OutboxMessage] = []
        messages: list[tuple[dict[str, Any], list[OutboxMessage]]] = []
        for row in rows:
            template = template_for(settings, row.purpose)
            if template:
                data = template_data(_text(row), now, row.url)
                messages.append((template_payload(openid, template, data, row.url), [row]))
            else:
                texts.append(row)
        if texts and not in_custom_window(followers.get(openid), now):
            plan.unreachable += texts
        elif texts:
            for content, group in bundle(texts, MAX_TEXT_BYTES):
                messages.append((text_payload(openid, content), group))
        for payload, group in messages:
            if limiter.allow(openid, now.timestamp()):
                plan.calls.append((payload, group))
            else:
                plan.held += group
    if plan.unreachable:
        mark(session, plan.unreachable, commit=False, status="failed", claimed_until=None, delivery_ref=None,
             last_error=render("errors/delivery_mp_window_closed.txt"))
    return plan


def mp_failed(session: Session, rows: list[OutboxMessage], exc: Exception, now: datetime,
              report: DeliveryReport, redis_url: str | None) -> None:
    """Record a failed Official Account call (the caller commits): back off, or fail with the reason."""
    if not isinstance(exc, MpAPIError):  # a bug below us: whether WeChat took it is unknown
        exc = MpAPIError(None, type(exc).__name__, outcome_unknown=True)
    metrics.delivery_error(redis_url, exc.errcode)
    raw = f"{exc.errcode}: {exc.errmsg}" + (f" (HTTP {exc.http_status})" if exc.http_status else "")
    if exc.outcome_unknown:
        fail_unknown(session, rows, report)
        return
    if exc.retryable:
        delay = backoff(max(r.attempts for r in rows) + 1)
        for row in rows:
            attempts = row.attempts + 1
            if attempts >= MAX_ATTEMPTS:
                mark(session, [row], commit=False, status="failed", attempts=attempts, claimed_until=None,
                     delivery_ref=None, last_error=render("errors/delivery_gave_up.txt", attempts=attempts,
                                                          reason=raw))
                report.failed += 1
            else:
                mark(session, [row], commit=False, status="pending", attempts=attempts, claimed_until=None,
                     delivery_ref=None, next_attempt_at=now + delay, last_error=raw)
                report.deferred += 1
        return
    reason = render(REASONS[exc.errcode], errcode=exc.errcode) if exc.errcode in REASONS else raw
    if exc.errcode == NOT_FOLLOWING:
        for openid in {r.recipient for r in rows}:
            note_follower(session, openid, now, wrote=False, following=False)
    mark(session, rows, commit=False, status="failed", attempts=OutboxMessage.attempts + 1, claimed_until=None,
         last_error=reason)
    report.failed += len(rows)
    report.failures += [f"{r.recipient}: {exc.errcode}" for r in rows]


def fail_unknown(session: Session, rows: list[OutboxMessage], report: DeliveryReport) -> None:
    """Rows of a call whose outcome is unknown: failed with that reason, never sent again by themselves
    (the caller commits)."""
    mark(session, rows, commit=False, status="failed", claimed_until=None,
         last_error=render("errors/delivery_mp_unknown.txt"))
    forget_calls(session, {r.delivery_ref for r in rows if r.delivery_ref})
    report.failed += len(rows)
    report.failures += [f"{r.recipient}: outcome unknown" for r in rows]
    log.warning("outbox: %d Official Account rows of a call with an unknown outcome failed, not re-sent", len(rows))


def fail_unconfigured(session: Session, rows: list[OutboxMessage], report: DeliveryReport) -> None:
    """Rows for the Official Account when it is not configured: failed with that reason."""
    mark(session, rows, commit=False, status="failed", claimed_until=None, delivery_ref=None,
         last_error=render("errors/delivery_mp_off.txt"))
    report.failed += len(rows)
