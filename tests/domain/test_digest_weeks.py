"""The digest's weeks (models/digest/weeks.py): each scope's domain means as of every Sunday the
weekly job ran (or the demo filled in), the same numbers as the classmates' cards as of that Sunday,
once per week whatever reruns."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from core.config import load_settings
from models.digest.college import build_college
from models.digest.weeks import CLASS, COLLEGE, DEPARTMENT, fill_weeks, scope_weeks
from models.io.demo import load_demo
from models.pages import class_average, class_figures
from models.risk.rules import rule_book
from models.schema import DigestMeans, SchoolClass
from models.scores import load_calendar

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = date(2025, 11, 24)
TERM_START = date(2025, 9, 1)


@pytest.fixture
def demo(session, catalogue):
    load_demo(session, catalogue, MONDAY, tz=TZ)
    session.commit()
    return load_calendar(session)


def sundays(until: date) -> list[date]:
    first = TERM_START + timedelta(days=6)
    return [first + timedelta(weeks=i) for i in range((until - first).days // 7 + 1)]


def weekly_job(session, catalogue, cal, monday: date) -> None:
    build_college(session, catalogue, cal, monday, TZ, rule_book(load_settings(environ={}), catalogue), persist=True)
    session.commit()


def test_the_demo_has_every_sunday_of_the_semester_so_far(session, catalogue, demo) -> None:
    term = demo.term_for(MONDAY)
    weeks = scope_weeks(session, catalogue, term, COLLEGE, 0, MONDAY)
    assert [w.day for w in weeks] == sundays(MONDAY - timedelta(days=1))
    assert all(w.students > 0 for w in weeks)
    assert fill_weeks(session, catalogue, demo, MONDAY) == 0  # nothing twice


def test_a_class_mean_is_the_mean_of_its_students_cards_as_of_that_sunday(session, catalogue, demo) -> None:
    term = demo.term_for(MONDAY)
    classes = session.scalars(select(SchoolClass.id).order_by(SchoolClass.id)).all()
    for day in (date(2025, 9, 14), date(2025, 10, 19), date(2025, 11, 23)):
        for class_id in classes[:3]:
            kept = {w.day: w for w in scope_weeks(session, catalogue, term, CLASS, class_id, MONDAY)}[day]
            live = class_figures(session, catalogue, demo, class_id, day)
            assert kept.averages == live.averages
            assert kept.total == live.mean_total


def test_the_card_compares_with_the_class_as_of_the_last_sunday(session, catalogue, demo) -> None:
    class_id = session.scalar(select(SchoolClass.id).where(SchoolClass.code == "计算机2301"))
    wednesday = MONDAY + timedelta(days=2)
    average = class_average(session, catalogue, demo, class_id, wednesday)
    assert average.day == date(2025, 11, 23)
    live = class_figures(session, catalogue, demo, class_id, average.day)
    assert (average.averages, average.mean_total) == (live.averages, live.mean_total)
    # Nothing kept for a fortnight: computed now, and said so (no day).
    stale = class_average(session, catalogue, demo, class_id, wednesday + timedelta(days=21))
    assert stale.day is None


def test_a_new_weeks_digest_adds_a_point_and_a_rerun_nothing(session, catalogue, demo) -> None:
    term = demo.term_for(MONDAY)
    before = session.scalar(select(func.count()).select_from(DigestMeans))
    weekly_job(session, catalogue, demo, MONDAY)  # the demo's own last week: kept already
    assert session.scalar(select(func.count()).select_from(DigestMeans)) == before
    next_monday = MONDAY + timedelta(days=7)
    weekly_job(session, catalogue, demo, next_monday)
    weeks = scope_weeks(session, catalogue, term, COLLEGE, 0, next_monday)
    assert [w.day for w in weeks][-2:] == [date(2025, 11, 23), date(2025, 11, 30)]
    after = session.scalar(select(func.count()).select_from(DigestMeans))
    groups = 1 + session.scalar(select(func.count()).select_from(SchoolClass)) + len(
        {d for (d,) in session.execute(select(SchoolClass.department_id))})
    assert after == before + groups
    weekly_job(session, catalogue, demo, next_monday)  # a rerun
    assert session.scalar(select(func.count()).select_from(DigestMeans)) == after
    for department_id in {d for (d,) in session.execute(select(SchoolClass.department_id))}:
        assert scope_weeks(session, catalogue, term, DEPARTMENT, department_id, next_monday)[-1].day == \
            date(2025, 11, 30)


def test_the_first_run_keeps_the_week_before_too(session, catalogue) -> None:
    """Without the demo's filled weeks: the job keeps its Sunday and the Sunday before."""
    from tests.fakes.factories import small_college  # noqa: PLC0415

    small_college(session)
    session.commit()
    cal = load_calendar(session)
    weekly_job(session, catalogue, cal, MONDAY)
    weeks = scope_weeks(session, catalogue, cal.term_for(MONDAY), COLLEGE, 0, MONDAY)
    assert [w.day for w in weeks] == [date(2025, 11, 16), date(2025, 11, 23)]
