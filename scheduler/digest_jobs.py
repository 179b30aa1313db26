"""The weekly digest (`weekly_digest`): Monday morning, to each 院领导 (the college) and each
系部主任 (their department), through the outbox.

The data is computed once per run for the whole college (models/digest/) and sliced per
recipient; scheduler/notify/digest.py renders it. Each digest is WeCom markdown within 2048
bytes, ending with a link to the dashboard (/h5/dashboard) signed for its recipient; a longer one is
split into numbered parts (the link on the last) whose period keys are the ISO week with "-1",
"-2" …. A recipient who already has any part of the week's digest gets nothing new, so a rerun
queues nothing. The run also keeps the card values as of the week's Sunday (models/digest/state.py),
in the same transaction, for next week's digest: once per week, whatever reruns (a rerun or a
concurrent run keeps the first).

Schedule: WEEKLY_DIGEST_CRON, `[DAYS] HH:MM` in APP_TIMEZONE (default `mon 07:50`: WeCom
advises against sending on the hour or half hour).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, tzinfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.config import Settings
from models.catalogue import Catalogue
from models.digest.college import build_college
from models.digest.recipients import PURPOSE, recipients
from models.digest.summary import digest_context
from models.digest.week import digest_week
from models.outbox import enqueue
from models.page_links import page_link
from models.risk.rules import RuleBook, rule_book
from models.schema import OutboxMessage, OverviewRequest, Staff, utcnow
from models.scores import load_calendar
from scheduler.notify.digest import weekly_markdown, weekly_text
from scheduler.registry import JobContext, job

DASHBOARD = "/h5/dashboard"


@dataclass
class Tally:
    """Counts for the job's one-line result."""

    queued: int = 0
    parts: int = 0
    already: int = 0
    no_account: int = 0

    def line(self, key: str) -> str:
        """The job's result line."""
        return (f"{key}: queued {self.queued} digests ({self.parts} messages), {self.already} already queued, "
                f"{self.no_account} recipients without WeCom account")


def already_sent(ctx: JobContext, key: str) -> set[str]:
    """Recipients who have the week's digest (whole or any part) in the outbox."""
    rows = ctx.session.scalars(select(OutboxMessage.recipient).where(
        OutboxMessage.purpose == PURPOSE,
        or_(OutboxMessage.period_key == key, OutboxMessage.period_key.like(f"{key}-%"))))
    return set(rows)


@job("weekly_digest", "Weekly digest to 院领导 (college) and 系部主任 (department), Monday morning")
def weekly_digest(ctx: JobContext) -> str:
    """Queue last week's digest for every 院领导 and 系部主任 with a WeCom account, once."""
    people = recipients(ctx.session)
    tally = Tally()
    data = None
    key = ""
    for person in people:
        if not person.userid:
            tally.no_account += 1
            continue
        if data is None:
            data = build_college(ctx.session, ctx.catalogue, ctx.calendar, ctx.today, ctx.now.tzinfo,
                                 rule_book(ctx.settings, ctx.catalogue), persist=True)
            key = data.week.key
            done = already_sent(ctx, key)
        if person.userid in done:
            tally.already += 1
            continue
        link = page_link(ctx.settings, "wecom", person.userid, DASHBOARD)
        parts = weekly_markdown(digest_context(data, person.department_id), link=link)
        keys = [key] if len(parts) == 1 else [f"{key}-{i}" for i in range(1, len(parts) + 1)]
        queued = [enqueue(ctx.session, person.userid, PURPOSE, k, body, msgtype="markdown")
                  for k, body in zip(keys, parts, strict=True)]
        if any(q is not None for q in queued):
            tally.queued += 1
            tally.parts += sum(q is not None for q in queued)
        else:
            tally.already += 1
        done.add(person.userid)
    if data is None:
        key = digest_week(ctx.today, ctx.calendar).key
    return tally.line(key)


OVERVIEW_PURPOSE = "weekly_overview"


def answer_overview_requests(sessions: Callable[[], Session], catalogue: Catalogue, today: date, zone: tzinfo,
                             book: RuleBook, settings: Settings | None = None) -> int:
    """Build the digest once for every `本周概况` still waiting (handlers/digest.py queued it when a
    callback could not wait for it) and queue each asker's slice as a push (with `settings`, ending with
    a link to the dashboard signed for the asker); the request is closed in the same transaction, so a
    rerun or a second scheduler answers nothing twice. Returns how many."""
    with sessions() as session:
        query = select(OverviewRequest).where(OverviewRequest.done_at.is_(None)).order_by(OverviewRequest.id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        waiting = list(session.scalars(query))
        if not waiting:
            return 0
        data = build_college(session, catalogue, load_calendar(session), today, zone, book)
        people = {p.staff_id: p for p in recipients(session)}
        accounts = dict(session.execute(select(Staff.id, Staff.wecom_userid).where(
            Staff.id.in_([r.staff_id for r in waiting]))).all())
        for request in waiting:
            person, userid = people.get(request.staff_id), accounts.get(request.staff_id)
            if person is not None and userid:
                link = page_link(settings, "wecom", userid, DASHBOARD) if settings is not None else None
                enqueue(session, userid, OVERVIEW_PURPOSE, f"request-{request.id}",
                        weekly_text(digest_context(data, person.department_id), link=link))
            request.done_at = utcnow()
        session.commit()
        return len(waiting)
