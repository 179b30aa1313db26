"""The card formula: conversion to card points, point values, subtotals, total, value added
and derived class points. Every expected number is worked out by hand in the comments."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from models.authz import FULL, View
from models.card import Entry, PointValue, build_card, derive_class_values, point_value, with_previous

DAY = date(2025, 11, 19)


def pv(value: float) -> PointValue:
    return PointValue(value, 1, DAY)


def lines(card, domain: str) -> list[str]:
    return [line.point.code for d in card.domains if d.domain == domain for line in d.lines]


# ───────────────────────── card_points per kind ─────────────────────────

@pytest.mark.parametrize(("code", "value", "points"), [
    # rate: the percentage itself, clamped to 0–100
    ("A06", 95, 95.0),
    ("A06", 0, 0.0),
    ("A06", 120, 100.0),
    # rate, direction down: 100 − v (学业未合格比率 12.5% → 87.5)
    ("KA05", 12.5, 87.5),
    ("KA05", 100, 0.0),
    # count up, 10 per time: 3 → 30, 12 → 120 capped at 100
    ("A07", 3, 30.0),
    ("A07", 12, 100.0),
    # count up, 50 per certificate: 1 → 50
    ("A10", 1, 50.0),
    # count down, 25 per 违纪: 0 → 100, 2 → 50, 5 → −25 floored at 0
    ("B13", 0, 100.0),
    ("B13", 2, 50.0),
    ("B13", 5, 0.0),
    # count down, 20 per 纠纷: 1 → 80
    ("B10", 1, 80.0),
    # level: the score written beside the level (记过 = 30, 市级 = 75, 基本对口 = 70)
    ("B14", 3, 30.0),
    ("B14", 0, 100.0),
    ("C09", 2, 75.0),
    ("C13", 1, 70.0),
    # a level index out of range is clamped to the last / first level
    ("B14", 9, 0.0),
    ("C09", -1, 0.0),
    # document: submitted = 100, not submitted = 0
    ("A01", 1, 100.0),
    ("A01", 0, 0.0),
    # score on 0–100: the score itself
    ("B08", 78, 78.0),
])
def test_card_points(catalogue, code, value, points):
    assert catalogue.by_code[code].card_points(value) == pytest.approx(points)


@pytest.mark.parametrize(("value", "points"), [
    (4, 80.0),      # 100 × (4 − 0) / 5
    (2.5, 50.0),    # 100 × 2.5 / 5
    (7, 100.0),     # above the range: capped
])
def test_score_on_another_range_is_scaled(catalogue, value, points):
    five_point = replace(catalogue.by_code["B08"], range=(0.0, 5.0))
    assert five_point.card_points(value) == pytest.approx(points)


def test_score_on_an_offset_range_down(catalogue):
    # range 60–100, direction down: 70 → 100 × 10/40 = 25 scaled → 75 card points
    point = replace(catalogue.by_code["B08"], range=(60.0, 100.0), direction="down")
    assert point.card_points(70) == pytest.approx(75.0)
    assert point.card_points(50) == pytest.approx(100.0)


# ───────────────────────── point_value ─────────────────────────

def test_observation_point_is_the_mean_of_its_sessions(catalogue):
    a06 = catalogue.by_code["A06"]  # 作业完成率, 每次课前
    entries = [
        Entry(1, "A06", "2025-W46", date(2025, 11, 10), 80),
        Entry(2, "A06", "2025-W46", date(2025, 11, 12), 90),
        Entry(3, "A06", "2025-W47", date(2025, 11, 17), 100),
        Entry(4, "A06", "2025-W47", date(2025, 11, 19), 70),
    ]
    value = point_value(a06, entries)
    # (80 + 90 + 100 + 70) / 4 = 85; four sessions, nothing replaced
    assert value == PointValue(85.0, 4, date(2025, 11, 19))


def test_weekly_point_keeps_the_latest_record_of_each_week_and_averages_the_weeks(catalogue):
    a03 = catalogue.by_code["A03"]  # 全勤率, 周末
    entries = [
        Entry(1, "A03", "2025-W46", date(2025, 11, 16), 80),
        Entry(2, "A03", "2025-W47", date(2025, 11, 19), 70),
        Entry(3, "A03", "2025-W46", date(2025, 11, 17), 90),  # corrects week 46
    ]
    value = point_value(a03, entries)
    # week 46 → 90 (80 replaced), week 47 → 70; (90 + 70) / 2 = 80 over 2 weeks
    assert value.value == pytest.approx(80.0)
    assert value.periods == 2
    assert value.last_on == date(2025, 11, 19)


def test_monthly_point_keeps_the_latest_record_of_each_month(catalogue):
    a04 = catalogue.by_code["A04"]  # 满勤率, 月末
    entries = [
        Entry(5, "A04", "2025-09", date(2025, 9, 30), 100),
        Entry(6, "A04", "2025-10", date(2025, 10, 31), 60),
        Entry(7, "A04", "2025-10", date(2025, 11, 2), 90),
    ]
    # September 100, October 90 (60 replaced) → 95
    assert point_value(a04, entries).value == pytest.approx(95.0)


def test_count_point_adds_up(catalogue):
    a07 = catalogue.by_code["A07"]  # 课外学习频次, 月末, count
    entries = [
        Entry(1, "A07", "2025-10", date(2025, 10, 8), 1),
        Entry(2, "A07", "2025-10", date(2025, 10, 20), 2),
        Entry(3, "A07", "2025-11", date(2025, 11, 3), 1),
    ]
    value = point_value(a07, entries)
    assert value.value == 4.0  # 1 + 2 + 1
    assert value.periods == 2  # October and November


def test_semester_point_is_the_latest_value(catalogue):
    a09 = catalogue.by_code["A09"]  # 学期学分绩, 学期末
    entries = [
        Entry(11, "A09", "2025-2026-1", date(2025, 11, 1), 70),
        Entry(12, "A09", "2025-2026-1", date(2025, 11, 5), 85),
    ]
    assert point_value(a09, entries) == PointValue(85.0, 1, date(2025, 11, 5))


def test_no_entries_no_value(catalogue):
    assert point_value(catalogue.by_code["A09"], []) is None


# ───────────────────────── build_card ─────────────────────────

VALUES = {
    "A06": pv(90),   # rate → 90
    "A07": pv(3),    # count ×10 → 30
    "B13": pv(2),    # count down ×25 → 50
    "B08": pv(80),   # score → 80
    "B12": pv(3),    # 心理辅导频次, weight 0: shown, not scored
    "C09": pv(3),    # level 省级 → 90
    "C01": pv(1),    # document → 100
}


def test_subtotals_and_total(catalogue):
    card = build_card(catalogue, VALUES)
    assert card.subtotal("学业发展") == 60.0   # (90 + 30) / 2
    assert card.subtotal("个人发展") == 65.0   # (50 + 80) / 2; 心理辅导频次 has weight 0
    assert card.subtotal("职业发展") == 95.0   # (90 + 100) / 2
    assert card.total == 72.0                  # 0.4×60 + 0.3×65 + 0.3×95 = 24 + 19.5 + 28.5
    # The weight-0 point is on the card with its own card points.
    personal = next(d for d in card.domains if d.domain == "个人发展")
    b12 = next(line for line in personal.lines if line.point.code == "B12")
    assert b12.card_points == 30.0
    assert b12.value.value == 3


def test_a_domain_with_only_a_weight_zero_point_has_no_subtotal(catalogue):
    card = build_card(catalogue, {"A06": pv(90), "B12": pv(5)})
    assert card.subtotal("个人发展") is None
    assert lines(card, "个人发展") == ["B12"]
    assert card.total == 90.0


def test_total_with_a_missing_domain_reweights_the_present_ones(catalogue):
    values = {k: v for k, v in VALUES.items() if not k.startswith("C")}
    card = build_card(catalogue, values)
    assert card.subtotal("职业发展") is None
    # (0.4×60 + 0.3×65) / 0.7 = 43.5 / 0.7 = 62.142… → 62.1
    assert card.total == 62.1


def test_empty_card(catalogue):
    card = build_card(catalogue, {})
    assert card.total is None
    assert all(d.subtotal is None and d.lines == [] for d in card.domains)
    assert card.value_added is None


def test_value_added_against_the_previous_card(catalogue):
    now = build_card(catalogue, VALUES)
    before = build_card(catalogue, {**VALUES, "A06": pv(80)})
    # before: 学业 (80 + 30) / 2 = 55; total 0.4×55 + 19.5 + 28.5 = 70.0
    assert before.total == 70.0
    card = with_previous(now, before)
    assert card.value_added == 2.0              # 72.0 − 70.0
    assert card.domain_added("学业发展") == 5.0  # 60 − 55
    assert card.domain_added("个人发展") == 0.0


def test_value_added_is_none_without_a_previous_total(catalogue):
    card = with_previous(build_card(catalogue, VALUES), build_card(catalogue, {}))
    assert card.value_added is None
    assert card.domain_added("学业发展") is None


def test_sensitive_point_hidden_but_still_counted(catalogue):
    values = {"B13": pv(1), "B14": pv(3)}  # 违纪 1 → 75; 记过 → 30
    full = build_card(catalogue, values, visible=View(FULL, True).shows)
    hidden = build_card(catalogue, values, visible=View(FULL, False).shows)
    assert lines(full, "个人发展") == ["B13", "B14"]
    assert lines(hidden, "个人发展") == ["B13"]
    # (75 + 30) / 2 = 52.5 for every viewer
    assert full.subtotal("个人发展") == hidden.subtotal("个人发展") == 52.5
    assert full.total == hidden.total == 52.5


def test_career_only_view_shows_career_lines_only(catalogue):
    card = build_card(catalogue, VALUES, visible=View(frozenset({"职业发展"}), False).shows)
    assert lines(card, "学业发展") == []
    assert lines(card, "个人发展") == []
    assert sorted(lines(card, "职业发展")) == ["C01", "C09"]
    assert card.total == 72.0


# ───────────────────────── derived class points ─────────────────────────

def test_derive_class_values(catalogue):
    per_student = [
        {"B13": pv(2), "A09": pv(55), "B07": pv(80), "C13": pv(2), "A10": pv(1)},
        {"B13": pv(1), "A09": pv(75), "B07": pv(90), "C13": pv(0)},
        {"A09": pv(58), "B07": pv(70)},
        {},
    ]
    derived = derive_class_values(catalogue, per_student, class_size=5)
    # 违纪频次 (sum of B13): 2 + 1 = 3
    assert derived["KB06"].value == 3.0
    # 违纪学生比率 (share B13 ≥ 1, nobody recorded = 0): 2 of a class of 5 = 40 %
    assert derived["KB07"].value == pytest.approx(40.0)
    # 学业未合格比率 (share A09 < 60 over students with a 学分绩): 55 and 58 of 3 = 66.67 %
    assert derived["KA05"].value == pytest.approx(66.667, abs=0.001)
    # 综合素质测评平均分数 (mean of B07): (80 + 90 + 70) / 3 = 80
    assert derived["KB05"].value == pytest.approx(80.0)
    assert derived["KB05"].periods == 3
    # 毕业生就业对口率 (share C13 ≥ 基本对口, level → over the class): 1 of 5 = 20 %
    assert derived["KC05"].value == pytest.approx(20.0)
    # 资格证获证率 (share A10 ≥ 1 over the class): 1 of 5 = 20 %
    assert derived["KC03"].value == pytest.approx(20.0)
    # Nobody has a 全勤率 or 宿舍得分: those class points are absent, not zero.
    assert "KA02" not in derived
    assert "KB03" not in derived
    # Typed class points are never derived.
    assert "KA03" not in derived and "KB01" not in derived


def test_derived_class_card(catalogue):
    per_student = [{"A03": pv(100)}, {"A03": pv(90)}, {"A03": pv(80)}]
    derived = derive_class_values(catalogue, per_student, class_size=3)
    assert derived["KA02"].value == pytest.approx(90.0)  # (100 + 90 + 80) / 3
    card = build_card(catalogue, derived, points=catalogue.for_class())
    assert card.subtotal("学业发展") == 90.0
    assert lines(card, "学业发展") == ["KA02"]
