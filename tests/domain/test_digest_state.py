"""The weekly digest's state (models/digest/state.py, fold.py, standing.py): week after week the
incremental numbers are those computed from scratch and those of the cards.

The demo college is loaded up to Sunday 12 October 2025; then five weeks are recorded through the
real recording code under a simulated clock, with what makes an incremental digest go wrong: late
`上周` entries within the grace window (some on Monday morning before the digest runs), a 全勤率
recorded twice in a week (the newer replaces), corrections of last week's and last month's values,
撤销 of this week's and of older entries (already in the state), a 学期末 value replaced, counts,
and an entry created before Monday 00:00 that gets a larger id than one created after it. Every
Monday at 07:50 the job runs; then the digest from the state must equal the digest from scratch
(every number of every recipient), every student's scores must equal the card's, and the state
the job wrote must equal one built from scratch.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, func, select

import models.digest.standing as digest_standing
import models.scores as scores
import scheduler.jobs  # noqa: F401  (registers every job)
from core.config import load_settings
from models.card import EMPTY, Formula, value_kind
from models.cards import student_card
from models.catalogue import DOMAINS
from models.digest.college import build_college
from models.digest.fold import Fold
from models.digest.recipients import PURPOSE, recipients
from models.digest.standing import split_instant, standing
from models.digest.state import State, fingerprint, load_state, save_state
from models.digest.summary import digest_context
from models.digest.week import compared_with, digest_week
from models.io.demo import load_demo
from models.periods import place
from models.risk.rules import rule_book
from models.schema import DigestState, OutboxMessage, SchoolClass, ScoreEntry, Staff, Student
from models.scores import PlannedEntry, load_calendar, record_entries, revoke
from scheduler.notify.digest import weekly_markdown
from scheduler.runner import run_job
from tests.fakes.chat import make_service, say

TZ = ZoneInfo("Asia/Shanghai")
LOADED = date(2025, 10, 12)  # a Sunday: the demo history ends here
FIRST = date(2025, 10, 13)  # the first simulated Monday
WEEKS = 5
# The second semester (default calendar: from 1 February): its first digest is against the end of
# the first semester, from the entries (学期末 values, and the 学年初 ones that count in both).
SPRING = (date(2026, 2, 1), date(2026, 2, 2), 3)


def book(catalogue):
    """The shipped early-warning rules (what the digest counts warnings by)."""
    return rule_book(load_settings(environ={}), catalogue)


class Clock:
    """The simulated wall clock: what recording, 撤销 and the state's built_at read."""

    def __init__(self, day: date) -> None:
        self.at = datetime.combine(day, time(0), TZ)

    def set(self, day: date, hour: int, minute: int = 0, second: int = 0) -> None:
        self.at = datetime.combine(day, time(hour, minute, second), TZ)

    def __call__(self) -> datetime:
        return self.at.astimezone(UTC)


class College:
    """Records and undoes through models.scores, as chat and imports do, at the clock's time."""

    def __init__(self, session, catalogue, clock: Clock) -> None:
        self.session, self.catalogue, self.clock = session, catalogue, clock
        self.cal = load_calendar(session)
        self.rng = random.Random(5)
        self.classes = session.scalars(select(SchoolClass).order_by(SchoolClass.id)).all()
        self.roll = {c.id: session.scalars(select(Student.id).where(Student.class_id == c.id)
                                           .order_by(Student.id)).all() for c in self.classes}
        self.head = {c.id: session.get(Staff, c.head_teacher_id) for c in self.classes}

    def record(self, recorder: Staff, code: str, students: list[int], values, today: date,
               previous: str | None = None) -> int:
        """One recording (a batch) made now, for `today` or (previous: its unit) the period before."""
        point = self.catalogue.by_code[code]
        placed = place(point.period, today, self.cal, previous)
        planned = [PlannedEntry(point, sid, None, str(sid), float(v), placed.occurred_on, placed.period_key,
                                placed.semester_key) for sid, v in zip(students, values, strict=True)]
        recorded = record_entries(self.session, recorder.name, recorder.id, planned, text=code)
        self.session.commit()
        return recorded.batch_id

    def undo(self, recorder: Staff, entries: list[ScoreEntry]) -> None:
        revoke(self.session, recorder.name, recorder.id, entries, None)
        self.session.commit()

    def values(self, k: int, choices=(100, 95, 90, 85, 80, 60, 0)) -> list[float]:
        return [self.rng.choice(choices) for _ in range(k)]

    def week(self, monday: date, first: bool) -> None:
        """One week of recording, from Monday (after the digest has run) to Sunday night."""
        rng, clock = self.rng, self.clock
        sunday = monday + timedelta(days=6)
        lagging = self.classes[1]  # records 全勤率 on Monday morning (上周) instead of Friday
        # Tuesday: the lagging class's 宿舍得分 of last week for half the class (上周, in the grace window).
        clock.set(monday + timedelta(days=1), 9)
        office = self.session.scalar(select(Staff).where(Staff.roles.like("%学工办%")))
        late = self.roll[lagging.id][::2]
        self.record(office, "B09", late, self.values(len(late), (90, 85, 80, 75)), clock.at.date(), "week")
        # ... and in the afternoon the other half of its 全勤率 of last week (the first half came on Monday).
        clock.set(monday + timedelta(days=1), 14)
        rest = self.roll[lagging.id][len(self.roll[lagging.id]) // 2:]
        self.record(self.head[lagging.id], "A03", rest, self.values(len(rest)), clock.at.date(), "week")
        for klass in self.classes:
            students = self.roll[klass.id]
            teacher = self.head[klass.id]
            for offset in sorted(rng.sample(range(5), 3)):  # 准时率 of three class sessions
                day = monday + timedelta(days=offset)
                clock.set(day, 8, rng.randrange(50))
                self.record(teacher, "A02", students, self.values(len(students), (100, 100, 100, 0)), day)
            if klass.id != lagging.id:  # 全勤率 and 宿舍得分 on Friday
                clock.set(monday + timedelta(days=4), 17, 30)
                self.record(teacher, "A03", students, self.values(len(students)), clock.at.date())
                self.record(office, "B09", students, self.values(len(students), (95, 90, 85, 80)), clock.at.date())
        # 王芳 records 全勤率 of two students again on Saturday: the newer value replaces.
        cs = self.classes[0]
        clock.set(monday + timedelta(days=5), 10)
        self.record(self.head[cs.id], "A03", self.roll[cs.id][:2], [50, 70], clock.at.date())
        # Counts add: 课外学习 for a few, one of them twice.
        clock.set(monday + timedelta(days=3), 16)
        few = rng.sample(self.roll[cs.id], 3)
        self.record(self.head[cs.id], "A07", few + few[:1], [1, 1, 1, 1], clock.at.date())
        # A 学期末 score recorded now and replaced two weeks later: the newest value counts.
        if not first:
            clock.set(monday + timedelta(days=2), 15)
            self.record(self.head[cs.id], "A09", self.roll[cs.id][:4], self.values(4, (90, 80, 70)), clock.at.date())
        # 撤销: a class session recorded by mistake this week, and one of three weeks ago (in the state).
        clock.set(monday + timedelta(days=2), 10)
        wrong = self.record(self.head[cs.id], "A02", self.roll[cs.id], [0] * len(self.roll[cs.id]), clock.at.date())
        clock.set(monday + timedelta(days=2), 10, 5)
        self.undo(self.head[cs.id], self.session.scalars(select(ScoreEntry).where(ScoreEntry.batch_id == wrong)).all())
        old = self.session.scalars(select(ScoreEntry).where(
            ScoreEntry.point_code == "A03", ScoreEntry.revoked_at.is_(None),
            ScoreEntry.occurred_on < monday - timedelta(days=14), ScoreEntry.student_id.in_(self.roll[cs.id][5:8]))
            .order_by(ScoreEntry.id.desc()).limit(2)).all()
        clock.set(monday + timedelta(days=3), 11)
        self.undo(self.head[cs.id], old)
        # 满勤率 at the end of October, and a 上月 correction of it in the grace window of November.
        for day in (monday + timedelta(days=i) for i in range(7)):
            if day == date(2025, 10, 31):
                clock.set(day, 17)
                for klass in self.classes:
                    self.record(self.head[klass.id], "A04", self.roll[klass.id],
                                self.values(len(self.roll[klass.id])), day)
            if day == date(2025, 11, 3):
                clock.set(day, 15)
                self.record(self.head[cs.id], "A04", self.roll[cs.id][:3], [40, 45, 50], day, "month")
        # Sunday night and Monday morning: an entry created before midnight gets the larger id
        # (its transaction was slower), then 上周 entries before the digest runs at 07:50.
        next_monday = sunday + timedelta(days=1)
        clock.set(next_monday, 0, 0, 5)
        self.record(self.head[cs.id], "A08", self.roll[cs.id][9:10], [1], next_monday)
        clock.set(sunday, 23, 59, 59)
        self.record(self.head[cs.id], "A08", self.roll[cs.id][10:11], [1], sunday)
        clock.set(next_monday, 7, 5)
        half = self.roll[lagging.id][: len(self.roll[lagging.id]) // 2]
        self.record(self.head[lagging.id], "A03", half, self.values(len(half)), next_monday, "week")
        # A correction of last week's 全勤率 for one student, and a class session of last week, on
        # Monday morning too.
        self.record(self.head[cs.id], "A03", self.roll[cs.id][3:4], [55], next_monday, "week")
        self.record(self.head[cs.id], "A02", self.roll[cs.id][:6], [0, 100, 0, 100, 100, 0], next_monday, "week")
        clock.set(next_monday, 7, 20)  # a Monday-morning class session, dated after the digest's week
        self.record(self.head[cs.id], "A02", self.roll[cs.id], self.values(len(self.roll[cs.id]), (100, 0)),
                    next_monday)


def demo_college(session, catalogue, monkeypatch, loaded: date = LOADED, first: date = FIRST) -> College:
    """The demo college loaded up to `loaded`, recorded in from `first` on under a simulated clock."""
    load_demo(session, catalogue, loaded, tz=TZ)
    session.commit()
    clock = Clock(first)
    monkeypatch.setattr(scores, "utcnow", clock)
    monkeypatch.setattr(digest_standing, "utcnow", clock)
    return College(session, catalogue, clock)


@pytest.fixture
def college(session, catalogue, monkeypatch):
    return demo_college(session, catalogue, monkeypatch)


def run_digest(db_url, redis_url, monday: date, at: time = time(7, 50)):
    result = run_job(make_service(db_url, monday, redis_url), "weekly_digest", datetime.combine(monday, at, TZ))
    assert result.status == "ok", result.result
    return result


def from_scratch(session, fn):
    """`fn()` with no state in the database (removed in a savepoint, put back after)."""
    nested = session.begin_nested()
    session.execute(delete(DigestState))
    try:
        return fn()
    finally:
        nested.rollback()


def contexts(session, catalogue, cal, monday: date, persist: bool = False) -> tuple[dict, list]:
    """Every number of the digest: per class, and every recipient's context."""
    data = build_college(session, catalogue, cal, monday, TZ, book(catalogue), persist=persist)
    per_class = {c.code: (c.averages.now, c.averages.before, c.averages.total_now, c.averages.total_before,
                          c.averages.added, c.expected, c.recorded) for c in data.classes.values()}
    return per_class, [digest_context(data, d) for d in (None, *sorted(data.departments))]


def state_rows(session) -> list[tuple[int, date, bytes]]:
    session.expire_all()
    return session.execute(select(DigestState.id, DigestState.cutoff, DigestState.data)
                           .order_by(DigestState.cutoff)).all()


def columns_of(state: State) -> dict[str, dict[int, tuple]]:
    return {code: dict(zip(col.sid, zip(col.n, col.total, col.value, col.last, col.key, strict=True), strict=True))
            for code, col in state.columns.items() if len(col)}


@pytest.mark.parametrize("start", [(LOADED, FIRST, WEEKS), SPRING], ids=["autumn", "spring"])
def test_week_after_week_the_state_gives_the_numbers_from_scratch_and_the_cards(start, session, catalogue, db_url,
                                                                                redis_url, monkeypatch):
    loaded, monday, weeks = start
    college = demo_college(session, catalogue, monkeypatch, loaded, monday)
    cal = college.cal
    # Before any state: 本周概况 computes from scratch and writes none.
    assert "储值卡周报" in say(make_service(db_url, monday + timedelta(days=2), redis_url), "wujun", "本周概况")
    assert state_rows(session) == []
    kept = []  # of the semester before
    if start == SPRING:
        # The autumn's last digest (Monday 26 January) leaves its state: spring's first digest
        # compares with the end of autumn merged from it, and it stays while spring's come and go.
        autumn_monday = date(2026, 1, 26)
        college.clock.set(autumn_monday, 7, 50)
        run_digest(db_url, redis_url, autumn_monday)
        kept = [autumn_monday - timedelta(days=1)]
        assert [r.cutoff for r in state_rows(session)] == kept
        # After it, autumn's last 学期学分绩 for a few students: the end of autumn includes them.
        first = college.classes[0]
        college.clock.set(autumn_monday + timedelta(days=1), 10)
        college.record(college.head[first.id], "A09", college.roll[first.id][:4], [55, 65, 75, 85],
                       college.clock.at.date())
    merged_weeks = 0
    for w in range(weeks):
        week = digest_week(monday, cal)
        if w == 0:  # just after midnight the last entries of Sunday may still be committing: no state yet
            college.clock.set(monday, 0, 10)
            run_digest(db_url, redis_url, monday, time(0, 10))
            assert [r.cutoff for r in state_rows(session)] == kept
        college.clock.set(monday, 7, 50)
        run_digest(db_url, redis_url, monday)
        rows = state_rows(session)
        assert [r.cutoff for r in rows] == kept + ([week.previous_sunday] if w else []) + [week.sunday]
        # A rerun queues nothing and leaves the state as it was.
        college.clock.set(monday, 9, 5)
        sent = session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.purpose == PURPOSE))
        again = run_digest(db_url, redis_url, monday, time(9, 5))
        assert "queued 0 digests" in again.result
        assert state_rows(session) == rows
        assert session.scalar(select(func.count()).select_from(OutboxMessage)
                              .where(OutboxMessage.purpose == PURPOSE)) == sent

        # The state the job wrote is the one built from scratch.
        kinds = {p.code: value_kind(p) for p in catalogue.individual()}
        split = split_instant(week.sunday, TZ)
        written = load_state(session, catalogue, week.term, week.sunday)
        cold = Fold(session, catalogue, kinds, week.term, State(week.term.key, week.term.start),
                        week.sunday, None, split, None)
        cold.run()
        cold.apply()
        assert written.cutoff == week.sunday
        assert (written.max_entry_id, written.pending) == (cold.max_entry_id, cold.pending)
        assert columns_of(written) == columns_of(cold.base)
        assert written.scores == Formula(catalogue, catalogue.individual()).scores(
            {c: (col.sid, col.value) for c, col in cold.base.columns.items()})
        if w:
            assert written.pending, "the entry created after midnight with the smaller id is pending"

        # The digest from the state (last week's) is the digest from scratch, number for number: as
        # the job computes it (entries after midnight count now, not in the new state: there is one
        # already, so nothing is written) and as 本周概况 does; and what the job queued is that.
        scratch = from_scratch(session, lambda day=monday: contexts(session, catalogue, cal, day))
        assert contexts(session, catalogue, cal, monday, persist=True) == scratch
        assert contexts(session, catalogue, cal, monday) == scratch
        assert state_rows(session) == rows
        bodies = {r.recipient: r.body for r in session.scalars(
            select(OutboxMessage).where(OutboxMessage.purpose == PURPOSE, OutboxMessage.period_key == week.key))}
        people = {p.userid: p.department_id for p in recipients(session) if p.userid}
        expected = from_scratch(session, lambda day=monday: build_college(session, catalogue, cal, day, TZ,
                                                                                book(catalogue)))
        links = {u: b.rsplit("[查看图表](", 1)[1].removesuffix(")") for u, b in bodies.items()}  # signed per person
        assert bodies == {u: weekly_markdown(digest_context(expected, d), link=links.get(u))[0]
                          for u, d in people.items()}
        standing_ = standing(session, catalogue, week.term, week.sunday, week.monday, compared_with(week, cal),
                             TZ, persist=False)
        merged_weeks += standing_.from_state is not None
        assert standing_.from_state == (week.previous_sunday if w else None)
        assert standing_.before_from_state == (kept[0] if kept and w == 0 else None)

        # Every student's scores are the card's, now and a week before.
        for sid in session.scalars(select(Student.id)):
            card, _latest = student_card(session, catalogue, cal, sid, week.sunday)
            now, before = standing_.now.get(sid, EMPTY), standing_.before.get(sid, EMPTY)
            assert now.subtotals == tuple(card.subtotal(d) for d in DOMAINS), sid
            assert (now.total, before.total) == (card.total, card.previous_total), sid
            assert before.subtotals == tuple(card.previous_subtotals[d] for d in DOMAINS), sid

        session.rollback()  # nothing of ours stays open while the chat and the next job write

        # A 撤销 that began at 07:30 and committed after the state was read: revoked_at is before
        # built_at, and next week's digest must still see it.
        college.clock.set(monday, 7, 30)
        college.undo(college.head[college.classes[2].id], session.scalars(select(ScoreEntry).where(
            ScoreEntry.point_code == "B09", ScoreEntry.revoked_at.is_(None), ScoreEntry.occurred_on < week.monday,
            ScoreEntry.student_id == college.roll[college.classes[2].id][w])).all()[:1])

        # 本周概况 later in the week reads the state and writes none.
        say(make_service(db_url, monday + timedelta(days=2), redis_url), "zhengyuan", "本周概况")
        assert state_rows(session) == rows
        college.week(monday, first=w == 0)
        monday += timedelta(days=7)
    assert merged_weeks == weeks - 1


def test_a_concurrent_run_keeps_the_first_state_and_goes_on(college, session, catalogue, clean_db):
    """Two runs of the same week (`jobs run` by hand while the scheduler's runs): the second one
    checks before the first has committed, so its insert waits for the first and then, on the
    unique constraint, writes nothing; its transaction goes on and commits."""
    from models.db import make_sessionmaker

    college.clock.set(FIRST, 7, 50)
    week = digest_week(FIRST, college.cal)
    kinds = {p.code: value_kind(p) for p in catalogue.individual()}
    fold = Fold(session, catalogue, kinds, week.term, State(week.term.key, week.term.start),
                    week.sunday, None, split_instant(week.sunday, TZ), None)
    fold.run()
    fold.apply()
    state = State(week.term.key, week.sunday, fold.max_entry_id, fold.pending, college.clock(), fold.base.columns)
    session.rollback()

    maker = make_sessionmaker(clean_db)
    outcome: dict = {}

    def second_run() -> None:
        with maker() as second:
            outcome["saved"] = save_state(second, catalogue, state)
            outcome["after"] = second.scalar(select(func.count()).select_from(DigestState))
            second.commit()

    with maker() as first:
        assert save_state(first, catalogue, state)  # written, not committed yet
        other = threading.Thread(target=second_run)
        other.start()
        other.join(1.0)
        assert other.is_alive(), "the second run waits for the first's transaction"
        first.commit()
        other.join(60)
    assert outcome == {"saved": False, "after": 1}
    assert [r.cutoff for r in state_rows(session)] == [week.sunday]
    written = load_state(session, catalogue, week.term, week.sunday)
    assert columns_of(written) == columns_of(state)


def test_a_state_of_another_catalogue_is_not_used(college, session, catalogue, db_url, redis_url):
    """A weight or a kind edited in catalogue.toml changes the card: last week's state no longer fits."""
    import dataclasses

    from models.catalogue import Catalogue

    college.clock.set(FIRST, 7, 50)
    run_digest(db_url, redis_url, FIRST)
    week = digest_week(FIRST, college.cal)
    assert load_state(session, catalogue, week.term, week.sunday) is not None
    points = [dataclasses.replace(p, weight=2.0) if p.code == "A03" else p for p in catalogue.points]
    edited = Catalogue(points, catalogue.formula)
    assert fingerprint(edited) != fingerprint(catalogue)
    assert load_state(session, edited, week.term, week.sunday) is None
