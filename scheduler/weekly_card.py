"""The student's weekly card: Monday morning, one message per student, in the name of their 班主任.

Weekly personal messages about missed work and absences cut course failures by about a
quarter (Bergman & Chan, 2021), while generic messages from no one in particular did nothing,
so each message is about the student's own week and signed "——班主任 <name>" (the 辅导员
when a class has no 班主任; nobody: no message). It tells, for the week just ended (Monday to
Sunday): the total and each domain's subtotal with its value added over the week, what was
recorded that week (sensitive points left out of a push), what the student can act on, and
ONE next step.

What the student can act on:
- a plan document not submitted (学业计划, 个人发展规划 — 学年初, due at the end of the first
  REMINDER_YEAR_START_WEEKS weeks of the year; 职业生涯规划 — 第一学期中, due mid-term 1),
  from PLAN_NOTICE_DAYS before its deadline on;
- 作业完成率 falling: last week's mean more than HOMEWORK_DROP points below the mean of the
  HOMEWORK_WEEKS weeks before;
- attendance: last week's 全勤率 below ATTENDANCE_FLOOR %.

The next step is the first of: attendance, homework, an overdue plan, a plan due soon, the
domain with the lowest subtotal, and (no record at all) a good start — absences and missed
work come first because they are what predicts failing a course.

Who gets it, on which channel (a person reachable on both channels gets each push once, on WeCom first):
- the student, with `weekly_card` on (`退订周报` turns it off): on WeCom when they have a WeCom
  account and the WeCom channel is configured; otherwise on the Official Account (channel "mp")
  when they bound their WeChat there as the student; otherwise on WeCom's account all the same
  (a console-only install prints it in the student's chat); otherwise nobody can reach them;
- every parent bound on the Official Account with their own `weekly_card` on (a parent's
  `退订周报`), whatever the student chose: the same card, greeting the parent (`parent` in
  templates/push/weekly_card.txt), on channel "mp". A push never shows a sensitive point.
Every card ends with a link to the card page (/h5/card: the student's own, a parent's the child's)
signed for its recipient on their channel (models/page_links.py), also kept as the row's `url` (the
Official Account's template message opens it). On WeCom it stays a text message with the link as its
last line rather than a textcard: a textcard's description holds 512 bytes, too few for the week's
records and what to act on, and one person's text rows are bundled into one message (WeCom keeps only
30 a minute) where textcards go one each.
The outbox key (recipient — userid or openid — + "student_weekly_card" + ISO week) makes a rerun
send nothing new. Entries are loaded for 1,000 students per query, and messages inserted in bulk.
The result line tallies how many went where.

Schedule: STUDENT_WEEKLY_CARD_CRON, `[DAYS] HH:MM` as the reminders' (default `mon 08:10`:
not on the hour, as WeCom asks).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from statistics import fmean

from sqlalchemy import select

from core.render import fit_items
from models.card import Card, Entry
from models.cards import cards_from_entries, load_entries
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.digest.week import DigestWeek, digest_week
from models.outbox import Draft, enqueue_many
from models.page_links import page_link
from models.periods import Calendar
from models.schema import FollowerBinding, OutboxMessage, SchoolClass, Staff, Student
from scheduler.registry import JobContext, job
from scheduler.reminders import first_semester_midpoint, in_session
from wechat.wecom_api import MAX_TEXT_BYTES

PURPOSE = "student_weekly_card"
ATTENDANCE = "A03"  # 全勤率 (周末)
HOMEWORK = "A06"  # 作业完成率 (每次课前)
ATTENDANCE_FLOOR = 90.0
HOMEWORK_DROP = 5.0
HOMEWORK_WEEKS = 3
PLAN_NOTICE_DAYS = 14
PLAN_PERIODS = ("学年初", "第一学期中")
RECORDED_SHOWN = 6
INSERT_CHUNK = 500
CARD_PAGE = "/h5/card"


@dataclass(frozen=True)
class PlanDue:
    """A plan document every student owes, with the period it is kept in and its deadline."""

    point: ScorePoint
    period_key: str
    deadline: date
    hand_to: str


def plans_due(catalogue: Catalogue, cal: Calendar, today: date, year_start_weeks: int) -> list[PlanDue]:
    """Plan documents whose deadline is at most PLAN_NOTICE_DAYS away (or past) on `today`."""
    term = cal.term_for(today)
    out = []
    for point in catalogue.individual():
        if point.kind != "document" or point.period not in PLAN_PERIODS or point.derived is not None:
            continue
        if point.period == "学年初":
            first = term if term.term == 1 else cal.previous_term(term)
            deadline = first.start + timedelta(days=7 * year_start_weeks - 1)
            key = term.year
        else:
            if term.term != 1:
                continue
            deadline, key = first_semester_midpoint(term), term.key
        if today < deadline - timedelta(days=PLAN_NOTICE_DAYS):
            continue
        hand_to = "班主任" if "班主任" in point.recorders else "或".join(point.recorders)
        out.append(PlanDue(point, key, deadline, hand_to))
    return out


def _latest(entries: list[Entry]) -> Entry | None:
    return max(entries, key=lambda e: e.id) if entries else None


def _fmt(point: ScorePoint, value: float) -> str:
    return point.display_value(round(value, 1))


def week_facts(catalogue: Catalogue, entries: list[Entry], card: Card, week: DigestWeek, plans: list[PlanDue],
               today: date) -> dict:
    """What one student's weekly card says: domains, records, what to act on, the next step."""
    by_code: dict[str, list[Entry]] = defaultdict(list)
    in_week: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_code[e.point_code].append(e)
        if week.monday <= e.occurred_on <= week.sunday:
            in_week[e.point_code].append(e)

    recorded = []
    for point in catalogue.points:  # catalogue order; only the codes of the week are looked at
        week_entries = in_week.get(point.code)
        if not week_entries or point.sensitive or point.is_class:
            continue
        if point.is_observation:
            mean = fmean(e.value for e in week_entries)
            recorded.append({"point": point.short, "value": _fmt(point, mean), "sessions": len(week_entries)})
        elif point.accumulates:
            recorded.append({"point": point.short, "value": _fmt(point, sum(e.value for e in week_entries)),
                             "sessions": None})
        else:
            recorded.append({"point": point.short, "value": _fmt(point, _latest(week_entries).value),
                             "sessions": None})

    todos: list[dict] = []
    attendance = catalogue.by_code.get(ATTENDANCE)
    if attendance is not None:
        latest = _latest([e for e in by_code.get(ATTENDANCE, []) if e.period_key == week.key])
        if latest is not None and latest.value < ATTENDANCE_FLOOR:
            todos.append({"kind": "attendance", "point": attendance.short, "value": _fmt(attendance, latest.value),
                          "floor": _fmt(attendance, ATTENDANCE_FLOOR)})
    homework = catalogue.by_code.get(HOMEWORK)
    if homework is not None:
        observed = by_code.get(HOMEWORK, [])
        start = week.monday - timedelta(days=7 * HOMEWORK_WEEKS)
        last = [e.value for e in in_week.get(HOMEWORK, [])]
        before = [e.value for e in observed if start <= e.occurred_on < week.monday]
        if last and before and fmean(last) < fmean(before) - HOMEWORK_DROP:
            todos.append({"kind": "homework", "point": homework.short, "last": _fmt(homework, fmean(last)),
                          "before": _fmt(homework, fmean(before))})
    for plan in plans:
        latest = _latest([e for e in by_code.get(plan.point.code, []) if e.period_key == plan.period_key])
        if latest is None or latest.value < 1:
            todos.append({"kind": "plan", "point": plan.point.short, "deadline": plan.deadline,
                          "overdue": today > plan.deadline, "hand_to": plan.hand_to})

    domains = [{"domain": d.domain, "subtotal": d.subtotal, "added": card.domain_added(d.domain)}
               for d in card.domains]
    return {"recorded": recorded, "todos": todos, "domains": domains, "step": next_step(todos, card)}


def next_step(todos: list[dict], card: Card) -> dict:
    """ONE next step: attendance, homework, an overdue plan, a plan due soon, the weakest domain, a start."""
    kinds = {t["kind"]: t for t in todos}
    for kind in ("attendance", "homework"):
        if kind in kinds:
            return kinds[kind]
    plans = sorted((t for t in todos if t["kind"] == "plan"), key=lambda t: (not t["overdue"], t["deadline"]))
    if plans:
        return plans[0]
    present = [d for d in card.domains if d.subtotal is not None]
    if present:
        weakest = min(present, key=lambda d: (d.subtotal, DOMAINS.index(d.domain)))
        return {"kind": "domain", "domain": weakest.domain}
    return {"kind": "start"}


def card_body(name: str, signer: str, head: str | None, week: DigestWeek, card: Card, facts: dict,
              parent: bool = False, url: str | None = None) -> str:
    """The message (to the student, or to a parent), ending with the link `url` to the card page, within
    WeCom's 2048 bytes by listing fewer records if ever needed (the Official Account's customer-service
    text has the same limit); the link is part of every length tried, so it is never what gets cut."""
    return fit_items("push/weekly_card.txt", facts["recorded"], MAX_TEXT_BYTES, at_most=RECORDED_SHOWN,
                     name=name, signer=signer, head=head, week=week, card=card, domains=facts["domains"],
                     todos=facts["todos"], step=facts["step"], parent=parent, url=url)


@dataclass
class Tally:
    """Counts for the job's one-line result."""

    wecom: int = 0  # queued to students on WeCom
    mp_students: int = 0  # queued to students on the Official Account
    parents: int = 0  # queued to parents on the Official Account
    already: int = 0
    unsubscribed: int = 0
    parents_unsubscribed: int = 0
    unreachable: int = 0  # students with neither a WeCom account nor a student binding
    no_signer: int = 0

    @property
    def queued(self) -> int:
        return self.wecom + self.mp_students + self.parents

    def line(self, key: str) -> str:
        """The job's result line."""
        return (f"{key}: queued {self.queued} weekly cards, {self.already} already queued, "
                f"{self.unsubscribed} unsubscribed, {self.unreachable} without WeCom account or binding, "
                f"{self.no_signer} without 班主任; {self.wecom} on WeCom, {self.mp_students} to students and "
                f"{self.parents} to parents on the Official Account, {self.parents_unsubscribed} parents unsubscribed")


@dataclass(frozen=True)
class Recipient:
    """Who one card goes to: a WeCom userid or an openid, and as whom."""

    to: str
    channel: str  # wecom | mp
    parent: bool = False


def _queue(ctx: JobContext, key: str, messages: list[tuple[Recipient, str, str]], tally: Tally) -> None:
    """Queue the messages (recipient, body, page link) in bulk (ON CONFLICT DO NOTHING: one already
    queued, by a rerun or a concurrent twin, is left out), counting the new ones by where they go."""
    for start in range(0, len(messages), INSERT_CHUNK):
        chunk = messages[start:start + INSERT_CHUNK]
        drafts = [(Draft(r.to, PURPOSE, key, b, channel=r.channel, url=url), r) for r, b, url in chunk]
        by_key = {d.key: r for d, r in drafts}
        new = enqueue_many(ctx.session, [d for d, _r in drafts])
        for draft_key in new:
            r = by_key[draft_key]
            if r.parent:
                tally.parents += 1
            elif r.channel == "mp":
                tally.mp_students += 1
            else:
                tally.wecom += 1
        tally.already += len(chunk) - len(new)


def recipients(tally: Tally, student_on: bool, wecom_userid: str | None,
               bindings: list[tuple[str, str, bool]], wecom_on: bool = True) -> list[Recipient]:
    """Where one student's card goes: the student once (WeCom first, else their own Official Account
    binding), and each subscribed parent; `bindings` are (openid, kind, weekly_card). `wecom_on`: the
    WeCom channel is configured; without it a student bound on the Official Account is reached there."""
    out: list[Recipient] = []
    own = next((openid for openid, kind, _on in bindings if kind == "student"), None)
    if not student_on:
        tally.unsubscribed += 1
    elif own and not wecom_on:
        out.append(Recipient(own, "mp"))
    elif wecom_userid:
        out.append(Recipient(wecom_userid, "wecom"))
    elif own:
        out.append(Recipient(own, "mp"))
    else:
        tally.unreachable += 1
    for openid, kind, on in sorted(bindings):
        if kind != "parent":
            continue
        if on:
            out.append(Recipient(openid, "mp", parent=True))
        else:
            tally.parents_unsubscribed += 1
    return out


@job("student_weekly_card", "Each student's own weekly card (value added, records, what to do), signed by the 班主任")
def student_weekly_card(ctx: JobContext) -> str:
    """Queue last week's personal card for every subscribed student (WeCom, else the Official Account)
    and every subscribed parent."""
    cal = ctx.calendar
    week = digest_week(ctx.today, cal)
    if not in_session(cal, week.monday, week.sunday):
        return f"{week.key}: nothing sent (vacation week)"
    tally = Tally()
    rows = ctx.session.execute(
        select(Student.id, Student.name, Student.wecom_userid, Student.weekly_card,
               SchoolClass.head_teacher_id, SchoolClass.counsellor_id)
        .join(SchoolClass, SchoolClass.id == Student.class_id)
        .order_by(Student.student_no)).all()
    signer_ids = {r.head_teacher_id for r in rows} | {r.counsellor_id for r in rows}
    names = dict(ctx.session.execute(select(Staff.id, Staff.name).where(Staff.id.in_(signer_ids - {None}))).all())
    already = set(ctx.session.scalars(select(OutboxMessage.recipient).where(
        OutboxMessage.purpose == PURPOSE, OutboxMessage.period_key == week.key)))
    bound: dict[int, list[tuple[str, str, bool]]] = defaultdict(list)
    for b in ctx.session.execute(select(FollowerBinding.student_id, FollowerBinding.openid, FollowerBinding.kind,
                                        FollowerBinding.weekly_card)):
        bound[b.student_id].append((b.openid, b.kind, bool(b.weekly_card)))
    todo = []
    for r in rows:
        to = recipients(tally, r.weekly_card, r.wecom_userid, bound.get(r.id, []),
                        wecom_on=ctx.settings.wecom_enabled)
        if not to:
            continue
        if r.head_teacher_id in names:
            signer = f"班主任 {names[r.head_teacher_id]}"
        elif r.counsellor_id in names:
            signer = f"辅导员 {names[r.counsellor_id]}"
        else:
            tally.no_signer += 1
            continue
        tally.already += sum(1 for t in to if t.to in already)
        to = [t for t in to if t.to not in already]
        if to:
            todo.append((r, signer, to))
    if not todo:
        return tally.line(week.key)

    ids = [r.id for r, _s, _to in todo]
    entries = load_entries(ctx.session, week.term, ids)
    cutoff = week.sunday - timedelta(days=7)
    previous = load_entries(ctx.session, cal.previous_term(week.term), ids) if cutoff < week.term.start else None
    plans = plans_due(ctx.catalogue, cal, ctx.today, ctx.reminders.year_start_weeks)
    cards = cards_from_entries(ctx.catalogue, entries, week.sunday, cutoff, previous, ids)
    messages: list[tuple[Recipient, str, str]] = []
    for r, signer, to in todo:
        mine = entries.get(r.id, [])
        card = cards[r.id]
        facts = week_facts(ctx.catalogue, mine, card, week, plans, ctx.today)
        head = names.get(r.head_teacher_id)
        for t in to:  # each recipient's own link, so each their own body
            url = page_link(ctx.settings, t.channel, t.to, CARD_PAGE)
            messages.append((t, card_body(r.name, signer, head, week, card, facts, t.parent, url), url))
    _queue(ctx, week.key, messages, tally)
    return tally.line(week.key)
