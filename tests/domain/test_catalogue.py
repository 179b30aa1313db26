"""The 60 采分点 against table 15 of the seed, name lookup, and catalogue validation."""

from __future__ import annotations

import copy

import pytest

from core.render import render
from models.catalogue import CatalogueError, parse_catalogue

# Table 15 of seed/000_66cd706b4fc88568.txt, transcribed by hand, cell by cell:
# (领域, 个人/班级, №, 采分点, 采分时点, 采分主体). Cells are as printed: "每学年初",
# "任课老师", two blank cells (""), and "教研室 学工办" for 职业生涯规划.
TABLE_15 = [
    # 学业发展 · 学生个体发展
    ("学业发展", "个人", 1, "学业计划", "学年初", "班主任"),
    ("学业发展", "个人", 2, "准时率（未迟到）", "每次课前", "任课教师"),
    ("学业发展", "个人", 3, "全勤率（未旷课）", "周末", "班主任"),
    ("学业发展", "个人", 4, "满勤率（无请假缺课）", "月末", "班主任"),
    ("学业发展", "个人", 5, "预习完成率", "每次课前", "任课教师"),
    ("学业发展", "个人", 6, "作业完成率", "每次课前", "任课教师"),
    ("学业发展", "个人", 7, "课外学习频次", "月末", "班主任"),
    ("学业发展", "个人", 8, "与教师沟通频次", "月末", "班主任"),
    ("学业发展", "个人", 9, "学期学分绩", "学期末", "班主任"),
    ("学业发展", "个人", 10, "职业资格证", "学年末", "班主任"),
    ("学业发展", "个人", 11, "学生满意度", "学期末", "班主任"),
    # 学业发展 · 学生集体（班级）发展
    ("学业发展", "班级", 1, "准时率（无迟到）", "周末", "班主任"),
    ("学业发展", "班级", 2, "全勤率（无旷课）", "周末", "班主任"),
    ("学业发展", "班级", 3, "满勤率（无请假）", "周末", "班主任"),
    ("学业发展", "班级", 4, "自学能力", "学期末", "班主任"),
    ("学业发展", "班级", 5, "学业未合格比率", "学期末", "班主任"),
    # 个人发展 · 学生个体发展
    ("个人发展", "个人", 1, "个人发展规划", "每学年初", "班主任"),
    ("个人发展", "个人", 2, "思想政治课程成绩", "学期末", "任课老师"),
    ("个人发展", "个人", 3, "思想政治素质得分", "学期末", "学工办"),
    ("个人发展", "个人", 4, "人文素养得分", "学期末", "学工办"),
    ("个人发展", "个人", 5, "社会实践得分", "学期末", "学工办"),
    ("个人发展", "个人", 6, "社会工作素质得分", "学期末", "学工办"),
    ("个人发展", "个人", 7, "综合素质测评", "学期末", "学工办"),
    ("个人发展", "个人", 8, "体能测试", "学期末", "体育老师"),
    ("个人发展", "个人", 9, "宿舍得分", "周末", "学工办"),
    ("个人发展", "个人", 10, "同学间纠纷频次", "学期末", "班主任"),
    ("个人发展", "个人", 11, "同学互评一致度", "学期末", "班主任"),
    ("个人发展", "个人", 12, "心理辅导频次", "学期末", "辅导员"),
    ("个人发展", "个人", 13, "违纪频次", "学期末", "学工办"),
    ("个人发展", "个人", 14, "违纪受处罚级别", "学期末", "学工办"),
    ("个人发展", "个人", 15, "基本能力增值", "学期末", "学工办"),
    # 个人发展 · 学生集体（班级）发展
    ("个人发展", "班级", 1, "主题班会得分平均分", "", ""),
    ("个人发展", "班级", 2, "政治学习得分平均分", "", ""),
    ("个人发展", "班级", 3, "宿舍得分平均分", "学期末", "辅导员"),
    ("个人发展", "班级", 4, "人文素养平均得分", "学期末", "班主任"),
    ("个人发展", "班级", 5, "综合素质测评平均分数", "学期末", "班主任"),
    ("个人发展", "班级", 6, "违纪频次", "学期末", "学工办"),
    ("个人发展", "班级", 7, "违纪学生比率", "学期末", "学工办"),
    # 职业发展 · 学生个体发展
    ("职业发展", "个人", 1, "职业生涯规划", "第一学期中", "教研室 学工办"),
    ("职业发展", "个人", 2, "创新创业课程成绩", "学期末", "任课教师"),
    ("职业发展", "个人", 3, "跟岗实习成绩", "学期末", "教研室"),
    ("职业发展", "个人", 4, "顶岗实习成绩", "学期末", "教研室"),
    ("职业发展", "个人", 5, "社会兼职", "学期末", "学工办"),
    ("职业发展", "个人", 6, "职业适应能力", "学期末", "教研室"),
    ("职业发展", "个人", 7, "实习受表扬频次", "学期末", "教研室"),
    ("职业发展", "个人", 8, "典型工作能力自述", "学期末", "教研室"),
    ("职业发展", "个人", 9, "参加职业技能比赛层次与频次", "学期末", "教研室"),
    ("职业发展", "个人", 10, "职业资格证书类别与级别", "学期末", "教研室"),
    ("职业发展", "个人", 11, "职业素养增值", "学期末", "教研室"),
    ("职业发展", "个人", 12, "职业成熟度", "学期末", "教研室"),
    ("职业发展", "个人", 13, "就业对口度", "毕业前", "教研室"),
    ("职业发展", "个人", 14, "学生入职满意度", "毕业前", "学工办"),
    ("职业发展", "个人", 15, "毕业生跟踪调查", "学期末", "学工办"),
    # 职业发展 · 学生集体（班级）发展
    ("职业发展", "班级", 1, "毕业生创业比率", "毕业前", "教研室"),
    ("职业发展", "班级", 2, "技能比赛参赛比率", "毕业前", "教研室"),
    ("职业发展", "班级", 3, "资格证获证率", "毕业前", "教研室"),
    ("职业发展", "班级", 4, "毕业生未毕业率", "毕业前", "学工办"),
    ("职业发展", "班级", 5, "毕业生就业对口率", "毕业前", "教研室"),
    ("职业发展", "班级", 6, "毕业生就业满意度", "毕业前", "学工办"),
    ("职业发展", "班级", 7, "用人单位评价", "毕业前", "学工办"),
]

# How a cell of table 15 maps onto the catalogue's vocabulary.
PERIOD_OF_CELL = {"每学年初": "学年初"}
ROLE_OF_CELL = {"任课老师": "任课教师"}
# Blank cells in table 15: the catalogue chooses a default and says so in table_note.
BLANK_DEFAULT = ("学期末", ("班主任",))


def expected(period_cell: str, recorder_cell: str) -> tuple[str, tuple[str, ...]]:
    if not period_cell and not recorder_cell:
        return BLANK_DEFAULT
    roles = tuple(ROLE_OF_CELL.get(r, r) for r in recorder_cell.split())
    return PERIOD_OF_CELL.get(period_cell, period_cell), roles


def test_table_15_has_41_individual_and_19_class_points():
    assert len(TABLE_15) == 60
    assert sum(1 for row in TABLE_15 if row[1] == "个人") == 41
    assert sum(1 for row in TABLE_15 if row[1] == "班级") == 19


def test_catalogue_counts(catalogue):
    assert len(catalogue) == 60
    assert len(catalogue.individual()) == 41
    assert len(catalogue.for_class()) == 19


def test_every_point_matches_table_15(catalogue):
    by_key = {(p.domain, p.scope, p.no): p for p in catalogue.points}
    assert len(by_key) == 60, "two points share domain, scope and №"
    mismatches = []
    for domain, scope, no, name, period_cell, recorder_cell in TABLE_15:
        point = by_key.get((domain, scope, no))
        if point is None:
            mismatches.append(f"{domain} {scope} №{no} {name}: missing")
            continue
        period, recorders = expected(period_cell, recorder_cell)
        got = (point.name, point.period, point.recorders)
        want = (name, period, recorders)
        if got != want:
            mismatches.append(f"{point.code}: {got} != table 15 {want}")
    assert mismatches == []


def test_table_note_exactly_where_the_catalogue_departs_from_the_printed_cell(catalogue):
    by_key = {(p.domain, p.scope, p.no): p for p in catalogue.points}
    departs, blank = set(), set()
    for domain, scope, no, _name, period_cell, recorder_cell in TABLE_15:
        point = by_key[(domain, scope, no)]
        if not period_cell and not recorder_cell:
            blank.add(point.code)
        if point.period != period_cell or " ".join(point.recorders) != recorder_cell:
            departs.add(point.code)
    assert blank == {"KB01", "KB02"}
    assert {p.code for p in catalogue.points if p.table_note} == departs
    assert departs == {"B01", "B02", "KB01", "KB02"}
    for code in ("KB01", "KB02"):
        note = catalogue.by_code[code].table_note
        assert "学期末" in note and "班主任" in note


def test_career_plan_is_recorded_by_teaching_office_and_student_affairs(catalogue):
    c01 = catalogue.lookup("职业生涯规划")["个人"]
    assert c01.code == "C01"
    assert set(c01.recorders) == {"教研室", "学工办"}
    assert c01.period == "第一学期中"


def test_every_derived_class_point_derives_from_an_individual_point(catalogue):
    derived = [p for p in catalogue.points if p.derived]
    assert derived, "the catalogue has derived class points"
    for p in derived:
        assert p.is_class, p.code
        source = catalogue.by_code[p.derived.of]
        assert not source.is_class, f"{p.code} derives from class point {source.code}"
    # The examples of PRODUCT.md §3 are derived, not typed in.
    for name in ("综合素质测评平均分数", "违纪学生比率", "资格证获证率"):
        assert catalogue.lookup(name)["班级"].derived is not None, name
    assert catalogue.by_code["KB07"].derived.of == "B13"
    assert catalogue.by_code["KC03"].derived.of == "A10"


def test_every_name_short_name_and_alias_resolves_to_its_point(catalogue):
    for p in catalogue.points:
        for name in {p.name, p.short, *p.aliases}:
            assert catalogue.lookup(name).get(p.scope) is p, (name, p.code)
            matched = catalogue.match_prefix(f"{name} 张三 90")
            assert matched is not None, name
            assert matched[1].get(p.scope) is p, (name, p.code)


@pytest.mark.parametrize(("typed", "scope", "code"), [
    ("作业", "个人", "A06"),
    ("作业完成率", "个人", "A06"),
    ("全勤率", "个人", "A03"),
    ("全勤率", "班级", "KA02"),
    ("全勤率（未旷课）", "个人", "A03"),
    ("全勤率(未旷课)", "个人", "A03"),
    ("违纪", "个人", "B13"),
    ("违纪", "班级", "KB06"),
    ("体测", "个人", "B08"),
    ("心理辅导", "个人", "B12"),
    ("  主题班会 ", "班级", "KB01"),
])
def test_lookup_by_short_name_or_alias(catalogue, typed, scope, code):
    assert catalogue.lookup(typed)[scope].code == code


def test_short_name_of_an_individual_and_a_class_point_gives_both(catalogue):
    points = catalogue.lookup("全勤率")
    assert {s: p.code for s, p in points.items()} == {"个人": "A03", "班级": "KA02"}
    assert set(catalogue.lookup("作业")) == {"个人"}
    assert catalogue.lookup("不存在的采分点") == {}


@pytest.mark.parametrize(("text", "name", "codes"), [
    ("作业完成率张三95", "作业完成率", {"个人": "A06"}),
    ("作业张三95", "作业", {"个人": "A06"}),
    ("违纪受处罚级别 李四 记过", "违纪受处罚级别", {"个人": "B14"}),
    ("违纪 李四", "违纪", {"个人": "B13", "班级": "KB06"}),
    ("资格证获证率 软件2301 80", "资格证获证率", {"班级": "KC03"}),
    ("全勤率 软件2301 全班 100", "全勤率", {"个人": "A03", "班级": "KA02"}),
    ("全勤率（未旷课） 张三 100", "全勤率(未旷课)", {"个人": "A03"}),
    ("作业完成率 张三 ９５", "作业完成率", {"个人": "A06"}),
])
def test_match_prefix_takes_the_longest_name(catalogue, text, name, codes):
    matched = catalogue.match_prefix(text)
    assert matched is not None
    got_name, points = matched
    assert got_name == name
    assert {s: p.code for s, p in points.items()} == codes


def test_match_prefix_unknown(catalogue):
    assert catalogue.match_prefix("你好 张三 95") is None


# ───────────── validation with small hand-written catalogues ─────────────

def _point(**over) -> dict:
    raw = {
        "code": "X01", "no": 1, "name": "测试点", "aliases": ["测试"], "domain": "学业发展",
        "scope": "个人", "kind": "rate", "period": "周末", "recorders": ["班主任"],
    }
    raw.update(over)
    return raw


def test_small_valid_catalogue():
    cat = parse_catalogue({"point": [_point(), _point(code="K01", scope="班级",
                                                     derived={"op": "mean", "of": "X01"})]})
    assert len(cat) == 2
    assert cat.lookup("测试")["班级"].derived.of == "X01"
    assert cat.formula.domain_weights == {"学业发展": 1.0, "个人发展": 1.0, "职业发展": 1.0}


@pytest.mark.parametrize(("data", "says"), [
    ({"point": [_point(kind="percent")]}, "kind"),
    ({"point": [_point(recorders=["班长"])]}, "班长"),
    ({"point": [_point(domain="身体发展")]}, "domain"),
    ({"point": [_point(scope="小组")]}, "scope"),
    ({"point": [_point(period="每天")]}, "period"),
    ({"point": [_point(kind="level")]}, "levels"),
    ({"point": [{k: v for k, v in _point().items() if k != "name"}]}, "name"),
    ({"point": [_point(), _point(code="X02", no=2, name="另一个点", aliases=["测试"])]}, "测试"),
    ({"point": [_point(), _point(name="另一个点", aliases=[])]}, "编码重复"),
    ({"point": [_point(), _point(code="K01", scope="班级", derived={"op": "mean", "of": "X09"})]},
     "derived"),
    ({"point": [_point(scope="班级"), _point(code="K01", scope="班级", name="另一个点", aliases=[],
                                             derived={"op": "mean", "of": "X01"})]}, "derived"),
    ({"point": [_point(), _point(code="K01", scope="班级", derived={"op": "avg", "of": "X01"})]},
     "avg"),
    ({"point": [_point(), _point(code="K01", scope="班级",
                                 derived={"op": "share", "of": "X01", "where": "at least 1"})]},
     "where"),
    ({"point": [_point(direction="sideways")]}, "direction"),
    ({"point": [_point(range=[100, 0])]}, "range"),
    ({"point": [_point()], "card": {"compare": "day"}}, "compare"),
], ids=["bad kind", "unknown role", "bad domain", "bad scope", "bad period", "level without levels",
        "missing name", "duplicate alias in scope", "duplicate code", "derived from unknown",
        "derived from class point", "bad derived op", "bad derived where", "bad direction",
        "empty range", "bad compare"])
def test_invalid_catalogue_raises_catalogue_error(data, says):
    with pytest.raises(CatalogueError) as info:
        parse_catalogue(copy.deepcopy(data))
    assert says in render("errors/problem.txt", p=info.value.problem)  # the edge words it


def test_same_alias_in_different_scopes_is_allowed():
    cat = parse_catalogue({"point": [_point(), _point(code="K01", scope="班级")]})
    assert {s: p.code for s, p in cat.lookup("测试").items()} == {"个人": "X01", "班级": "K01"}
