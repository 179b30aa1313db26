"""The set-based scan: many warnings opened at once write what evaluating each student alone
writes, a rerun writes nothing, a warning opened concurrently is joined (never twinned), a
bundle claimed by delivery meanwhile keeps its body, and the one aggregate over every window
agrees with a plain reading of the entries (a period recorded twice, a re-recorded score)."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, time, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.config import load_settings
from models.periods import UNIT_OF_PERIOD
from models.risk import aggregates as risk_aggregates
from models.risk import matching, warnings
from models.risk.aggregates import Window, aggregates, replaces, window_bounds
from models.risk.checks import Person, evaluate_entries, raise_flag, scan
from models.risk.routing import Notifier
from models.risk.rules import rule_book
from models.schema import (
    OutboxMessage,
    RiskNotice,
    RiskWarning,
    RiskWarningEvent,
    RiskWarningRecipient,
    ScoreEntry,
    Staff,
    Student,
)
from models.scores import load_calendar
from scheduler.notify import warnings as notify
from scheduler.risk_jobs import risk_scan
from tests.dispatch.test_warnings import SETTINGS, TODAY, TZ, messages, put, run, sid, staff_id
from tests.fakes.factories import small_college

NOW = datetime.combine(TODAY, time(6, 40), TZ)
CLASSMATES = 30  # with 张三 and 李四: 32 warnings for 王芳 and 刘伟, over a weekly cap of 10


@pytest.fixture
def big_class(session, catalogue):
    """The small college, 计算机2301 grown by 30 students, every one absent too often this month."""
    college = small_college(session)
    session.add_all([Student(student_no=f"20230199{i:02d}", name=f"学生{i:02d}", class_id=college.cs.id)
                     for i in range(1, CLASSMATES + 1)])
    session.commit()
    names = ["张三", "李四"] + [f"学生{i:02d}" for i in range(1, CLASSMATES + 1)]
    for n, name in enumerate(names):
        for weeks_ago, value in enumerate((85, 80 + n % 8, 90)):
            put(session, catalogue, name, "A03", TODAY - timedelta(weeks=weeks_ago), value)
    return names


def written(session) -> dict[str, set]:
    """Every warning row a run wrote, with warning ids replaced by the student's name."""
    session.flush()
    names = dict(session.execute(select(Student.id, Student.name)).all())
    staff = dict(session.execute(select(Staff.id, Staff.wecom_userid)).all())
    student_of = {w.id: names[w.student_id] for w in session.scalars(select(RiskWarning))}

    def plain(text: str) -> str:
        return re.sub(r"#(\d+)", lambda m: f"#{student_of.get(int(m.group(1)), m.group(1))}", text)

    return {
        "warnings": {(student_of[w.id], w.category, w.level, w.status, w.sensitive, w.summary)
                     for w in session.scalars(select(RiskWarning))},
        "events": {(student_of[e.warning_id], e.kind, e.level, e.rule_id, e.signature)
                   for e in session.scalars(select(RiskWarningEvent))},
        "recipients": {(student_of[r.warning_id], staff[r.staff_id], r.relation)
                       for r in session.scalars(select(RiskWarningRecipient))},
        "notices": {(student_of[n.warning_id], staff[n.staff_id], n.event_key, n.bundled, n.outbox_id is not None)
                    for n in session.scalars(select(RiskNotice))},
        "outbox": {(m.recipient, m.purpose, plain(f"#{m.period_key}") if m.purpose == "warning" else m.period_key,
                    plain(m.body)) for m in session.scalars(select(OutboxMessage))},
    }


def test_one_scan_of_many_students_writes_what_evaluating_each_alone_writes(big_class, session, catalogue):
    cal = load_calendar(session)
    book = rule_book(SETTINGS, catalogue)
    out = scan(session, book, catalogue, cal, NOW, TODAY, notify=notify, tz=TZ)
    at_once = written(session)
    session.rollback()
    for name in big_class:
        entries = list(session.scalars(select(ScoreEntry).where(ScoreEntry.student_id == sid(session, name))))
        evaluate_entries(session, book, catalogue, cal, entries, NOW, TODAY, notify=notify, tz=TZ)
    one_by_one = written(session)
    session.rollback()
    assert at_once == one_by_one
    assert out.opened == len(at_once["warnings"]) == len(big_class)
    assert (out.notices.single, out.notices.bundled) == (2 * 10, 2 * (len(big_class) - 10))
    # What a person reads: 10 warnings alone each, then one bundle with the other 22.
    singles = [m for m in at_once["outbox"] if m[0] == "wangfang" and m[1] == "warning"]
    [bundle] = [m for m in at_once["outbox"] if m[0] == "wangfang" and m[1] == "warning_bundle"]
    assert len(singles) == 10 and all("全勤率 近4周" in body and "处理 #" in body for *_k, body in singles)
    # Weekly values are counted as records ("近4周 … 5周均值" read as a mistake).
    assert all(re.search(r"全勤率 近4周 \d+(\.\d)?%（\d次记录均值，至\d\d-\d\d）", body) for *_k, body in singles)
    assert bundle[2] == "2025-W47" and bundle[3].startswith("本周发给你的预警已超过 10 条")
    assert bundle[3].count("【学业·预警】") + int(re.search(r"另有 (\d+) 条", bundle[3] + "另有 0 条")[1]) == 22
    assert {(w[0], w[2]) for w in at_once["warnings"]} == {(n, "预警") for n in big_class}
    assert {r[1:] for r in at_once["recipients"]} == {("wangfang", "班主任"), ("liuwei", "辅导员")}


def test_a_second_scan_of_many_open_warnings_writes_nothing(big_class, session, catalogue):
    assert f"{len(big_class)} opened" in run(risk_scan, session, catalogue, TODAY)
    before = written(session)
    counts = [session.scalar(select(func.count()).select_from(t)) for t in (RiskWarningEvent, RiskNotice)]
    assert "0 opened, 0 raised, 0 updated" in run(risk_scan, session, catalogue, TODAY)
    assert "queued 0 messages, 0 bundled" in run(risk_scan, session, catalogue, TODAY + timedelta(days=1))
    assert written(session) == before
    assert [session.scalar(select(func.count()).select_from(t)) for t in (RiskWarningEvent, RiskNotice)] == counts


def test_a_warning_opened_concurrently_is_joined_not_twinned(college_with_absence, session, catalogue, engine,
                                                             monkeypatch):
    """Between the scan's look at open warnings and its insert, a teacher's flag opens 张三's 学业 warning."""
    real_load_open = warnings._load_open
    calls = []

    def load_then_flag(s, keys):
        found = real_load_open(s, keys)
        if not calls:
            calls.append(keys)
            with Session(engine) as other:  # another connection, another transaction
                student = other.get(Student, sid(other, "张三"))
                author = Person(staff_id(other, "chenjing"), "陈静", "陈静", "任课教师")
                book = rule_book(SETTINGS, catalogue)
                raise_flag(other, book, student, book.category("学业"), None, "连续两周缺课", author, NOW, TODAY,
                           notify=notify, tz=TZ)
                other.commit()
        return found

    monkeypatch.setattr(warnings, "_load_open", load_then_flag)
    result = run(risk_scan, session, catalogue, TODAY)
    assert calls and "0 opened" in result and "1 updated" in result  # added to the flag's warning
    [w] = session.scalars(select(RiskWarning).where(RiskWarning.student_id == sid(session, "张三"))).all()
    assert w.status == "open" and w.level == "预警"
    kinds = session.execute(select(RiskWarningEvent.kind, RiskWarningEvent.rule_id).where(
        RiskWarningEvent.warning_id == w.id).order_by(RiskWarningEvent.id)).all()
    assert [tuple(k) for k in kinds] == [("opened", "flag_academic"), ("evidence", "absence_chronic")]
    assert "全勤率 近4周" in w.summary and "连续两周缺课" in w.summary
    # 王芳 and 刘伟 heard of it once, from the flag: the scan's evidence at the same level tells no one again.
    assert sorted((m.recipient, m.period_key) for m in messages(session, w.id)) == [
        ("liuwei", f"{w.id}/opened"), ("wangfang", f"{w.id}/opened")]


@pytest.fixture
def college_with_absence(session, catalogue):
    small_college(session)
    for day, value in ((TODAY, 85), (TODAY - timedelta(weeks=1), 80)):
        put(session, catalogue, "张三", "A03", day, value)


def test_a_bundle_claimed_by_delivery_meanwhile_keeps_its_body(big_class, session, catalogue, monkeypatch):
    capped = load_settings({"secret_key": "test", "risk_policy_overrides": {"WARNING_WEEKLY_CAP": "2"}})
    run(risk_scan, session, catalogue, TODAY, settings=capped)
    [first] = [m for m in messages(session) if m.recipient == "wangfang" and m.purpose == "warning_bundle"]
    body = first.body
    put(session, catalogue, "王五", "A03", TODAY, 85)
    put(session, catalogue, "王五", "A03", TODAY - timedelta(weeks=1), 85)
    real_targets = Notifier._bundle_targets

    def targets_then_claimed(self, userids):
        found = real_targets(self, userids)
        # The delivery job claims the pending bundle before this run writes its body.
        self.session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(list(found.values())))
                             .values(status="sending"))
        return found

    monkeypatch.setattr(Notifier, "_bundle_targets", targets_then_claimed)
    run(risk_scan, session, catalogue, TODAY + timedelta(days=1), settings=capped)
    mine = [m for m in messages(session) if m.recipient == "wangfang" and m.purpose == "warning_bundle"]
    assert [m.period_key for m in mine] == ["2025-W47", "2025-W47#2"]
    assert mine[0].body == body and "王五" not in body and "王五" in mine[1].body
    [notice] = session.scalars(select(RiskNotice).join(RiskWarning, RiskWarning.id == RiskNotice.warning_id).where(
        RiskWarning.student_id == sid(session, "王五"), RiskNotice.staff_id == staff_id(session, "wangfang"))).all()
    assert notice.bundled and notice.outbox_id == mine[1].id


# ── the one aggregate, against a plain reading of the entries ───────────────

def reference(entries: list[ScoreEntry], catalogue, window: Window) -> dict[tuple[int, str], tuple]:
    """(n, total, last day, newest value) per student and point, entry by entry (as the card reads them)."""
    grouped: dict[tuple[int, str], list[ScoreEntry]] = defaultdict(list)
    for e in entries:
        if e.point_code in window.codes and window.start <= e.occurred_on <= window.end:
            grouped[(e.student_id, e.point_code)].append(e)
    out = {}
    for key, found in grouped.items():
        if replaces(catalogue.by_code[key[1]]):
            newest: dict[str, ScoreEntry] = {}
            for e in sorted(found, key=lambda e: e.id):
                newest[e.period_key] = e
            found = list(newest.values())
        latest = max(found, key=lambda e: e.id).value
        out[key] = (len(found), sum(e.value for e in found), max(e.occurred_on for e in found), latest)
    return out


def test_the_one_aggregate_agrees_with_reading_every_entry(session, catalogue):
    small_college(session)
    cal = load_calendar(session)
    monday = TODAY - timedelta(days=TODAY.weekday())
    # 全勤率 twice in one week (a correction: the newest counts), once on each side of a window's edge;
    # 作业完成率 sessions; 违纪 counts; a 学期学分绩 recorded twice (the newest is the value).
    put(session, catalogue, "张三", "A03", monday, 60)
    put(session, catalogue, "张三", "A03", monday + timedelta(days=1), 95)
    put(session, catalogue, "张三", "A03", monday - timedelta(weeks=1), 90)
    put(session, catalogue, "李四", "A03", TODAY - timedelta(days=27), 70)
    put(session, catalogue, "李四", "A03", TODAY - timedelta(days=28), 100)
    put(session, catalogue, "李四", "A03", TODAY - timedelta(days=29), 80)
    put(session, catalogue, "张三", "A06", TODAY - timedelta(days=2), 60, 100, 80, recorder="chenjing")
    put(session, catalogue, "王五", "B13", TODAY - timedelta(days=40), 1, recorder="sunli")
    put(session, catalogue, "王五", "B13", TODAY, 1, 1, recorder="sunli")
    put(session, catalogue, "赵六", "A09", TODAY - timedelta(days=30), 50)
    put(session, catalogue, "赵六", "A09", TODAY, 72)
    put(session, catalogue, "钱七", "A09", TODAY, 58, recorder="xuhong")
    codes = frozenset({"A03", "A06", "B13", "A09"})
    windows = [Window(*window_bounds(w, TODAY, cal), codes, frozenset({"A09", "A03"}))
               for w in ("28d", "30d", "semester")]
    windows.append(Window(TODAY - timedelta(days=83), TODAY - timedelta(days=28), codes, frozenset({"A09"})))
    found = aggregates(session, catalogue, cal, windows)
    entries = list(session.scalars(select(ScoreEntry)))
    for w in windows:
        expected = reference(entries, catalogue, w)
        got = found[w.span]
        assert set(got) == set(expected), w
        for key, (n, total, last_on, latest) in expected.items():
            agg = got[key]
            assert (agg.n, agg.total, agg.last_on) == (n, pytest.approx(total), last_on), (w, key)
            assert agg.mean == pytest.approx(total / n)
            if replaces(catalogue.by_code[key[1]]) and (key[1] in w.latest or n == 1):
                assert agg.latest == latest, (w, key)
    week = found[windows[0].span][(sid(session, "张三"), "A03")]
    assert (week.n, week.mean) == (2, 92.5)  # this week's 95 (not 60) and last week's 90
    assert found[windows[2].span][(sid(session, "赵六"), "A09")].latest == 72


def test_a_period_split_by_a_window_edge_is_still_one_period(session, catalogue):
    """Two 全勤率 entries of one week on either side of another window's first day: one period, the newest."""
    small_college(session)
    cal = load_calendar(session)
    edge = TODAY - timedelta(days=29)  # the 30-day window's first day cuts the baseline's days in two
    week_start = edge - timedelta(days=edge.weekday())
    assert UNIT_OF_PERIOD[catalogue.by_code["A03"].period] == "week" and week_start < edge
    put(session, catalogue, "张三", "A03", edge - timedelta(days=1), 40)
    put(session, catalogue, "张三", "A03", edge, 100)
    baseline = Window(TODAY - timedelta(days=83), TODAY - timedelta(days=28), frozenset({"A03"}))
    month = Window(edge, TODAY, frozenset({"B12"}))
    agg = aggregates(session, catalogue, cal, [baseline, month])[baseline.span][(sid(session, "张三"), "A03")]
    assert (agg.n, agg.mean) == (1, 100.0)


def test_nothing_is_aggregated_for_a_cohort_nobody_is_in(session, catalogue, monkeypatch):
    """Far from graduation, the final-year rules' year window is not even read."""
    small_college(session)
    put(session, catalogue, "张三", "A03", TODAY, 85)
    put(session, catalogue, "张三", "A03", TODAY - timedelta(weeks=1), 80)
    seen: list[set[str]] = []
    real = risk_aggregates.aggregates

    def spy(s, cat, cal, windows, students=None):
        seen.append({c for w in windows for c in w.codes})
        return real(s, cat, cal, windows, students)

    monkeypatch.setattr(matching, "aggregates", spy)
    book = rule_book(SETTINGS, catalogue)
    found = matching.find(session, book, catalogue, load_calendar(session), TODAY, book.automatic())
    assert {f.rule.id for f in found} == {"absence_chronic"}
    [codes] = seen
    assert "A03" in codes and not codes & {"C13", "C06"}


def test_the_grouped_days_cover_every_window(session, catalogue):
    """A window with no entries in its days still answers (empty), next to one with entries."""
    small_college(session)
    cal = load_calendar(session)
    put(session, catalogue, "张三", "B13", TODAY, 1, recorder="sunli")
    empty = Window(date(2025, 1, 1), date(2025, 1, 31), frozenset({"B13"}))
    now = Window(*window_bounds("semester", TODAY, cal), frozenset({"B13"}))
    found = aggregates(session, catalogue, cal, [empty, now])
    assert found[empty.span] == {} and found[now.span][(sid(session, "张三"), "B13")].total == 1
