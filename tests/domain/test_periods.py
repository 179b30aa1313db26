"""The academic calendar, period keys and where a record is placed (PRODUCT.md §3, §5)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from core.render import render
from models.periods import Calendar, PeriodError, Term, period_key, period_label, place, unit_bounds

DEFAULT = Calendar()

# A configured 校历 with vacations between the semesters.
T_2024_1 = Term("2024-2025", 1, date(2024, 9, 9), date(2025, 1, 17))
T_2024_2 = Term("2024-2025", 2, date(2025, 2, 24), date(2025, 7, 11))
T_2025_1 = Term("2025-2026", 1, date(2025, 9, 8), date(2026, 1, 16))
T_2025_2 = Term("2025-2026", 2, date(2026, 3, 2), date(2026, 7, 10))
CONFIGURED = Calendar([T_2025_2, T_2024_1, T_2025_1, T_2024_2])  # order does not matter


def worded(err: PeriodError) -> str:
    """The period problem as chat and the import word it."""
    return render("errors/problem.txt", p=err.problem)


# ───────────────────────── the default calendar ─────────────────────────

@pytest.mark.parametrize(("day", "key", "start", "end"), [
    (date(2025, 9, 1), "2025-2026-1", date(2025, 9, 1), date(2026, 1, 31)),
    (date(2025, 11, 19), "2025-2026-1", date(2025, 9, 1), date(2026, 1, 31)),
    (date(2025, 12, 31), "2025-2026-1", date(2025, 9, 1), date(2026, 1, 31)),
    (date(2026, 1, 1), "2025-2026-1", date(2025, 9, 1), date(2026, 1, 31)),
    (date(2026, 1, 31), "2025-2026-1", date(2025, 9, 1), date(2026, 1, 31)),
    (date(2026, 2, 1), "2025-2026-2", date(2026, 2, 1), date(2026, 8, 31)),
    (date(2026, 8, 31), "2025-2026-2", date(2026, 2, 1), date(2026, 8, 31)),
    (date(2026, 9, 1), "2026-2027-1", date(2026, 9, 1), date(2027, 1, 31)),
])
def test_default_calendar(day, key, start, end):
    term = DEFAULT.term_for(day)
    assert (term.key, term.start, term.end) == (key, start, end)


def test_default_calendar_every_day_of_a_year_belongs_to_a_semester_that_contains_it():
    day, seen = date(2025, 1, 1), set()
    while day <= date(2026, 12, 31):
        term = DEFAULT.term_for(day)
        assert term.contains(day), day
        seen.add(term.key)
        day += timedelta(days=1)
    assert seen == {"2024-2025-1", "2024-2025-2", "2025-2026-1", "2025-2026-2", "2026-2027-1"}


def test_term_labels():
    assert DEFAULT.term_for(date(2025, 11, 19)).label == "2025-2026学年第一学期"
    assert DEFAULT.term_for(date(2026, 4, 1)).label == "2025-2026学年第二学期"


# ───────────────────────── a configured calendar ─────────────────────────

@pytest.mark.parametrize(("day", "term"), [
    (date(2025, 9, 8), T_2025_1),    # first day
    (date(2026, 1, 16), T_2025_1),   # last day
    (date(2026, 1, 17), T_2025_1),   # winter vacation → the semester before
    (date(2026, 2, 20), T_2025_1),
    (date(2026, 3, 1), T_2025_1),
    (date(2026, 3, 2), T_2025_2),
    (date(2026, 8, 15), T_2025_2),   # summer vacation → the semester before
    (date(2025, 9, 1), T_2024_2),    # still the summer vacation of 2024-2025
])
def test_configured_calendar(day, term):
    assert CONFIGURED.term_for(day) == term


def test_a_year_not_yet_configured_follows_the_default_rule():
    # The 校历 stops at 2025-2026: a September 2026 record belongs to 2026-2027, not to
    # the last configured semester (a 学年初 point would otherwise replace last year's).
    term = CONFIGURED.term_for(date(2026, 9, 15))
    assert term.key == "2026-2027-1"
    assert period_key("学年初", date(2026, 9, 15), CONFIGURED) == "2026-2027"
    assert CONFIGURED.previous_term(term) == T_2025_2


@pytest.mark.parametrize(("unit", "day", "bounds"), [
    ("week", date(2025, 11, 19), (date(2025, 11, 17), date(2025, 11, 23))),
    ("month", date(2026, 2, 10), (date(2026, 2, 1), date(2026, 2, 28))),
    ("semester", date(2026, 4, 1), (T_2025_2.start, T_2025_2.end)),
    ("year", date(2025, 10, 1), (T_2025_1.start, T_2025_2.end)),
    ("year", date(2026, 4, 1), (T_2025_1.start, T_2025_2.end)),
])
def test_unit_bounds_in_a_configured_calendar(unit, day, bounds):
    assert unit_bounds(unit, day, CONFIGURED) == bounds


def test_year_bounds_in_the_default_calendar():
    assert unit_bounds("year", date(2026, 4, 1), DEFAULT) == (date(2025, 9, 1), date(2026, 8, 31))


def test_previous_term():
    assert CONFIGURED.previous_term(T_2025_2) == T_2025_1
    assert CONFIGURED.previous_term(T_2025_1) == T_2024_2
    assert DEFAULT.previous_term(DEFAULT.term_for(date(2025, 11, 19))).key == "2024-2025-2"


# ───────────────────────── period keys ─────────────────────────

WEDNESDAY = date(2025, 11, 19)  # ISO week 47 of 2025, first semester of 2025-2026


@pytest.mark.parametrize(("period", "key", "label"), [
    ("每次课前", "2025-W47", "2025年第47周"),
    ("周末", "2025-W47", "2025年第47周"),
    ("月末", "2025-11", "2025年11月"),
    ("学期末", "2025-2026-1", "2025-2026学年第一学期"),
    ("第一学期中", "2025-2026-1", "2025-2026学年第一学期"),
    ("学年初", "2025-2026", "2025-2026学年"),
    ("学年末", "2025-2026", "2025-2026学年"),
    ("毕业前", "2025-2026", "2025-2026学年"),
])
def test_period_key_for_each_time(period, key, label):
    assert period_key(period, WEDNESDAY, DEFAULT) == key
    assert period_label(period, key) == label


def test_period_keys_in_the_second_semester_and_at_the_turn_of_the_year():
    assert period_key("学期末", date(2026, 3, 5), DEFAULT) == "2025-2026-2"
    assert period_key("学年末", date(2026, 6, 30), DEFAULT) == "2025-2026"
    assert period_key("周末", date(2026, 1, 1), DEFAULT) == "2026-W01"
    assert period_key("周末", date(2025, 12, 29), DEFAULT) == "2026-W01"  # ISO week
    assert period_key("学期末", date(2026, 2, 20), CONFIGURED) == "2025-2026-1"  # vacation


# ───────────────────────── place ─────────────────────────

def test_place_today():
    placed = place("周末", WEDNESDAY, DEFAULT)
    assert (placed.occurred_on, placed.period_key, placed.semester_key) == (
        WEDNESDAY, "2025-W47", "2025-2026-1")


@pytest.mark.parametrize("today", [date(2025, 11, 24), date(2025, 11, 25), date(2025, 11, 26)])
def test_last_week_within_the_grace_window(today):
    # Monday to Wednesday after week 47 (which ends on Sunday 23 November)
    placed = place("周末", today, DEFAULT, previous="week")
    assert placed.period_key == "2025-W47"
    assert placed.occurred_on == date(2025, 11, 23)
    assert placed.semester_key == "2025-2026-1"


def test_last_week_after_the_grace_window():
    with pytest.raises(PeriodError) as err:
        place("周末", date(2025, 11, 27), DEFAULT, previous="week")  # Thursday
    assert worded(err.value) == "上周的补录期已过（截至11月26日）"


def test_last_month_within_and_after_the_grace_window():
    assert place("月末", date(2025, 12, 5), DEFAULT, previous="month").period_key == "2025-11"
    with pytest.raises(PeriodError) as err:
        place("月末", date(2025, 12, 6), DEFAULT, previous="month")
    assert worded(err.value) == "上月的补录期已过（截至12月5日）"


def test_last_semester_after_a_configured_winter_vacation():
    # 2025-2026-2 starts on 2 March; the vacation belonged to 2025-2026-1, so a teacher
    # back on 10 March may still fill last semester's points (14 days' grace).
    placed = place("学期末", date(2026, 3, 10), CONFIGURED, previous="semester")
    assert placed.period_key == "2025-2026-1"
    with pytest.raises(PeriodError) as err:
        place("学期末", date(2026, 3, 16), CONFIGURED, previous="semester")
    assert worded(err.value) == "上学期的补录期已过（截至3月15日）"


def test_last_year_after_a_configured_summer_vacation():
    placed = place("学年末", date(2025, 9, 10), CONFIGURED, previous="year")
    assert placed.period_key == "2024-2025"


@pytest.mark.parametrize(("period", "previous", "message"), [
    ("周末", "month", "该采分点按周记录，不能用“上月”"),
    ("每次课前", "semester", "该采分点按周记录，不能用“上学期”"),
    ("学期末", "week", "该采分点按学期记录，不能用“上周”"),
    ("月末", "week", "该采分点按月记录，不能用“上周”"),
])
def test_wrong_unit_word(period, previous, message):
    with pytest.raises(PeriodError) as err:
        place(period, WEDNESDAY, DEFAULT, previous=previous)
    assert worded(err.value) == message


def test_first_semester_point_outside_the_first_semester():
    assert place("第一学期中", WEDNESDAY, DEFAULT).period_key == "2025-2026-1"
    with pytest.raises(PeriodError) as err:
        place("第一学期中", date(2026, 4, 1), DEFAULT)
    assert worded(err.value) == "该采分点在第一学期录入"


def test_graduation_point_only_in_the_final_year():
    # A 2023 cohort graduates in 2025-2026 (three-year programme).
    assert place("毕业前", WEDNESDAY, DEFAULT, grade=2023).period_key == "2025-2026"
    assert place("毕业前", WEDNESDAY, DEFAULT).period_key == "2025-2026"  # grade unknown
    for grade in (2024, 2025):
        with pytest.raises(PeriodError) as err:
            place("毕业前", WEDNESDAY, DEFAULT, grade=grade)
        assert worded(err.value) == "该采分点在毕业学年录入"
