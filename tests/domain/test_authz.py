"""The role matrix of PRODUCT.md §2: who records which point, who sees which card."""

from __future__ import annotations

import pytest

from models.authz import Actor, class_view, may_record, student_view

MINE = 1       # the class in the actor's scope (taught, headed, counselled, in the department)
OTHER = 2      # a class of another department, nobody's in this table
STUDENT = 101  # 张三, of class MINE
CLASSMATE = 102

ACTORS = {
    "学生": Actor("s101", "张三", student_id=STUDENT, student_class_id=MINE),
    "任课教师": Actor("t1", "李老师", staff_id=1, roles=frozenset({"任课教师"}), taught_classes={MINE}),
    "班主任": Actor("t2", "王老师", staff_id=2, roles=frozenset({"班主任"}), head_classes={MINE}),
    "辅导员": Actor("t3", "赵老师", staff_id=3, roles=frozenset({"辅导员"}), counsel_classes={MINE}),
    "学工办": Actor("t4", "钱老师", staff_id=4, roles=frozenset({"学工办"}), department_id=1,
                   department_classes={MINE}),
    "教研室": Actor("t5", "孙老师", staff_id=5, roles=frozenset({"教研室"}), department_id=1,
                   department_classes={MINE}),
    "体育老师": Actor("t6", "周老师", staff_id=6, roles=frozenset({"体育老师"}), taught_classes={MINE}),
    "系部主任": Actor("t7", "吴主任", staff_id=7, roles=frozenset({"系部主任"}), department_id=1,
                     department_classes={MINE}),
    "院领导": Actor("t8", "郑院长", staff_id=8, roles=frozenset({"院领导"})),
    "管理员": Actor("t9", "冯管理", staff_id=9, roles=frozenset({"管理员"})),
    # 班主任 of MINE who also teaches OTHER: each role acts in its own classes only.
    "班主任+任课教师": Actor("t10", "陈老师", staff_id=10, roles=frozenset({"班主任", "任课教师"}),
                        head_classes={MINE}, taught_classes={OTHER}),
}

# The representative points and who records them (table 15).
POINTS = {
    "全勤率": "A03",        # 班主任
    "作业完成率": "A06",    # 任课教师
    "体能测试": "B08",      # 体育老师
    "违纪频次": "B13",      # 学工办
    "心理辅导频次": "B12",  # 辅导员
    "职业生涯规划": "C01",  # 教研室 and 学工办
    "班级全勤率": "KA02",   # derived from the students' 全勤率: recorded by nobody
}

ALL = frozenset({"学业发展", "个人发展", "职业发展"})
VIEWS = {
    "全部+敏感": (ALL, True),
    "全部": (ALL, False),
    "职业": (frozenset({"职业发展"}), False),
    "—": (frozenset(), False),
}

# actor, class, student whose card is looked at, may record, sees the student's card, sees the class card
MATRIX = [
    ("学生", MINE, STUDENT, "", "全部+敏感", "—"),
    ("学生", MINE, CLASSMATE, "", "—", "—"),
    ("学生", OTHER, 201, "", "—", "—"),
    ("任课教师", MINE, STUDENT, "作业完成率", "全部", "全部"),
    ("任课教师", OTHER, 201, "", "—", "—"),
    ("班主任", MINE, STUDENT, "全勤率", "全部+敏感", "全部"),
    ("班主任", OTHER, 201, "", "—", "—"),
    ("辅导员", MINE, STUDENT, "心理辅导频次", "全部+敏感", "全部"),
    ("辅导员", OTHER, 201, "", "—", "—"),
    ("学工办", MINE, STUDENT, "违纪频次 职业生涯规划", "全部+敏感", "全部"),
    ("学工办", OTHER, 201, "", "—", "—"),
    ("教研室", MINE, STUDENT, "职业生涯规划", "职业", "职业"),
    ("教研室", OTHER, 201, "", "—", "—"),
    ("体育老师", MINE, STUDENT, "体能测试", "全部", "全部"),
    ("体育老师", OTHER, 201, "", "—", "—"),
    ("系部主任", MINE, STUDENT, "", "全部", "全部"),
    ("系部主任", OTHER, 201, "", "—", "—"),
    ("院领导", MINE, STUDENT, "", "—", "全部"),
    ("院领导", OTHER, 201, "", "—", "全部"),
    ("管理员", MINE, STUDENT, "", "—", "—"),
    ("管理员", OTHER, 201, "", "—", "—"),
    ("班主任+任课教师", MINE, STUDENT, "全勤率", "全部+敏感", "全部"),
    ("班主任+任课教师", OTHER, 201, "作业完成率", "全部", "全部"),
]


@pytest.mark.parametrize(
    ("who", "class_id", "student_id", "records", "card", "class_card"), MATRIX,
    ids=[f"{row[0]}-{'本班' if row[1] == MINE else '他班'}-{row[2]}" for row in MATRIX])
def test_role_matrix(catalogue, who, class_id, student_id, records, card, class_card):
    actor = ACTORS[who]

    recordable = {name for name, code in POINTS.items()
                  if may_record(actor, catalogue.by_code[code], class_id)}
    assert recordable == set(records.split())

    view = student_view(actor, student_id, class_id)
    domains, sensitive = VIEWS[card]
    assert (view.domains, view.sensitive) == (domains, sensitive)
    # What that means on the card: sensitive points (心理辅导频次, 违纪受处罚级别) only
    # for the student, 班主任, 辅导员 and 学工办; 违纪频次 for anyone who sees 个人发展.
    assert view.shows(catalogue.by_code["B12"]) is sensitive
    assert view.shows(catalogue.by_code["B14"]) is sensitive
    assert view.shows(catalogue.by_code["B13"]) is ("个人发展" in domains)
    assert view.shows(catalogue.by_code["C01"]) is ("职业发展" in domains)

    cview = class_view(actor, class_id)
    assert (cview.domains, cview.sensitive) == (VIEWS[class_card][0], False)
