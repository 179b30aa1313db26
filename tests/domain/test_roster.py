"""Roster import (PRODUCT.md §5): workbook and csv folder, upsert, all-or-nothing, error messages."""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import func, select

from core.render import render
from models.db import Base
from models.io.roster import ImportReport, RosterError, import_roster, write_template
from models.io.roster_read import parse_roles, parse_term, parse_year, read_roster
from models.io.sheets import parse_date
from models.schema import Department, SchoolClass, Semester, Staff, Student, TeachingAssignment


def worded(problems: list) -> list[str]:
    """Problems as the CLI prints them."""
    return [render("errors/problem.txt", p=p) for p in problems]


def summary(report: ImportReport) -> str:
    """An import report as the CLI prints it."""
    return render("cli/import_report.txt", report=report)


HEADERS = {
    "系部": ["系部名称", "系部主任工号"],
    "班级": ["班级编号", "班级名称", "系部", "年级", "班主任工号", "辅导员工号"],
    "教职工": ["工号", "姓名", "企业微信账号", "角色", "系部"],
    "学生": ["学号", "姓名", "班级编号", "企业微信账号"],
    "任课": ["工号", "班级编号", "课程"],
    "校历": ["学年", "学期", "开始日期", "结束日期"],
}
ENGLISH = {
    "系部": ["Department", "head_staff_no"],
    "班级": ["class_code", "CLASS_NAME", "department", "grade", "head_teacher_no", "counsellor_no"],
    "教职工": ["staff_no", "Name", "wecom_userid", "roles", "department"],
    "学生": ["student_no", "name", "class_code", "wecom_userid"],
    "任课": ["staff_no", "class_code", "course"],
    "校历": ["year", "term", "start_date", "end_date"],
}


def full_rows() -> dict[str, list[list]]:
    """A small college; cells typed as Excel would give them (numbers, dates)."""
    return {
        "系部": [
            ["信息工程系", "T001"],
            ["机电工程系", None],
        ],
        "教职工": [
            ["T001", "王主任", "wangzr", "系部主任", "信息工程系"],
            ["T002", "李老师", "lils", "班主任、任课老师", "信息工程系"],
            ["T003", "赵辅导", "zhaofd", "辅导员；学工办", "信息工程系"],
            ["T004", "钱老师", None, "体育老师, 任课教师", "机电工程系"],
            [" T005 ", "孙院长", "sunyz", "院领导", None],
        ],
        "班级": [
            ["CS2301", "计算机2301", "信息工程系", 2023, "T002", "T003"],
            ["ME2401", "机电2401", "机电工程系", "2024级", None, "T003"],
        ],
        "学生": [
            [2023010101, "张三", "CS2301", "zhangsan"],
            [2023010102.0, "李四", "CS2301", None],
            ["２０２４０２０１０１", "王五", "ME2401", "wangwu"],
        ],
        "任课": [
            ["T002", "CS2301", "Python程序设计"],
            ["T004", "ME2401", "体育"],
            ["T004", "CS2301", "体育"],
        ],
        "校历": [
            ["2025-2026", 1, datetime(2025, 9, 1), datetime(2026, 1, 18)],
            ["2025-2026", "第二学期", "2026/2/23", "2026-07-10"],
        ],
    }


# What the full workbook becomes, by natural keys.
EXPECTED = {
    "department": [("信息工程系", "T001"), ("机电工程系", None)],
    "staff": [
        ("T001", "王主任", "wangzr", "系部主任", "信息工程系"),
        ("T002", "李老师", "lils", "班主任,任课教师", "信息工程系"),
        ("T003", "赵辅导", "zhaofd", "辅导员,学工办", "信息工程系"),
        ("T004", "钱老师", None, "任课教师,体育老师", "机电工程系"),
        ("T005", "孙院长", "sunyz", "院领导", None),
    ],
    "class": [
        ("CS2301", "计算机2301", "信息工程系", 2023, "T002", "T003"),
        ("ME2401", "机电2401", "机电工程系", 2024, None, "T003"),
    ],
    "student": [
        ("2023010101", "张三", "CS2301", "zhangsan"),
        ("2023010102", "李四", "CS2301", None),
        ("2024020101", "王五", "ME2401", "wangwu"),
    ],
    "teaching": [
        ("T002", "CS2301", "Python程序设计"),
        ("T004", "CS2301", "体育"),
        ("T004", "ME2401", "体育"),
    ],
    "semester": [
        ("2025-2026", 1, date(2025, 9, 1), date(2026, 1, 18)),
        ("2025-2026", 2, date(2026, 2, 23), date(2026, 7, 10)),
    ],
}
FULL_COUNTS = {"系部": 2, "教职工": 5, "班级": 2, "学生": 3, "任课": 3, "校历": 2}


def make_xlsx(path: Path, rows: dict[str, list[list]], headers: dict[str, list[str]] = HEADERS,
              extra_sheets: bool = True) -> Path:
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    if extra_sheets:
        wb.create_sheet("说明").append(["这张表不是名册，应被忽略"])
    for name, data in rows.items():
        ws = wb.create_sheet(name)
        ws.append(headers[name])
        for r in data:
            ws.append(r)
    wb.save(path)
    return path


def make_csv(folder: Path, rows: dict[str, list[list]], encoding: str = "utf-8-sig") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in rows.items():
        with open(folder / f"{name}.csv", "w", encoding=encoding, newline="") as fh:
            w = csv.writer(fh)
            w.writerow(HEADERS[name])
            for r in data:
                w.writerow(["" if c is None else (c.date().isoformat() if isinstance(c, datetime) else c)
                            for c in r])
    return folder


def snapshot(session) -> dict[str, list[tuple]]:
    """The roster tables by natural keys (ids resolved), sorted."""
    dept = {d.id: d.name for d in session.scalars(select(Department))}
    staff = {s.id: s.staff_no for s in session.scalars(select(Staff))}
    classes = {c.id: c.code for c in session.scalars(select(SchoolClass))}
    return {
        "department": sorted((d.name, d.head_staff_no) for d in session.scalars(select(Department))),
        "staff": sorted((s.staff_no, s.name, s.wecom_userid, s.roles, dept.get(s.department_id))
                        for s in session.scalars(select(Staff))),
        "class": sorted((c.code, c.name, dept[c.department_id], c.grade, staff.get(c.head_teacher_id),
                         staff.get(c.counsellor_id)) for c in session.scalars(select(SchoolClass))),
        "student": sorted((s.student_no, s.name, classes[s.class_id], s.wecom_userid)
                          for s in session.scalars(select(Student))),
        "teaching": sorted((staff[a.staff_id], classes[a.class_id], a.course)
                           for a in session.scalars(select(TeachingAssignment))),
        "semester": sorted((s.year, s.term, s.start, s.end) for s in session.scalars(select(Semester))),
    }


def raw_rows(session) -> dict[str, list[tuple]]:
    """Every row of every table, ids included, straight from the database."""
    session.expire_all()
    return {t.name: sorted(tuple(r) for r in session.execute(t.select()).all())
            for t in Base.metadata.sorted_tables}


def row_count(session) -> int:
    return sum(session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables)


def created(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    return {sheet: {"新增": n, "更新": 0, "未变": 0} for sheet, n in counts.items()}


# ---------------------------------------------------------------- happy paths


def test_full_workbook_imports(session, tmp_path):
    report = import_roster(session, make_xlsx(tmp_path / "roster.xlsx", full_rows()))
    session.commit()
    assert report.counts == created(FULL_COUNTS)
    assert list(report.counts) == ["系部", "教职工", "班级", "学生", "任课", "校历"]
    assert summary(report).splitlines()[0] == "系部：新增 2，更新 0，未变 0"
    assert "学生：新增 3，更新 0，未变 0" in summary(report)
    assert snapshot(session) == EXPECTED
    cls = session.scalar(select(SchoolClass).where(SchoolClass.code == "CS2301"))
    assert cls.head_teacher.staff_no == "T002" and cls.counsellor.staff_no == "T003"
    assert session.scalar(select(Staff).where(Staff.staff_no == "T002")).role_set == {"班主任", "任课教师"}


def test_csv_folder_imports_the_same(session, tmp_path):
    report = import_roster(session, make_csv(tmp_path / "roster", full_rows()))
    session.commit()
    assert report.counts == created(FULL_COUNTS)
    assert snapshot(session) == EXPECTED


def test_csv_in_gb18030_and_without_bom(session, tmp_path):
    rows = full_rows()
    folder = make_csv(tmp_path / "gb", {"系部": rows["系部"], "教职工": rows["教职工"]}, encoding="gb18030")
    make_csv(folder, {"班级": rows["班级"]}, encoding="utf-8")
    (folder / "readme.txt").write_text("not a sheet", encoding="utf-8")
    (folder / "其他.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    report = import_roster(session, folder)
    assert report.counts == created({"系部": 2, "教职工": 5, "班级": 2})
    assert snapshot(session)["class"] == EXPECTED["class"]


def test_reimport_changes_nothing(session, tmp_path):
    path = make_xlsx(tmp_path / "roster.xlsx", full_rows())
    import_roster(session, path)
    session.commit()
    before = raw_rows(session)
    report = import_roster(session, path)
    assert not session.new and not session.dirty
    session.commit()
    assert report.counts == {sheet: {"新增": 0, "更新": 0, "未变": n} for sheet, n in FULL_COUNTS.items()}
    assert "学生：新增 0，更新 0，未变 3" in summary(report)
    assert raw_rows(session) == before
    # The csv export of the same roster is the same roster.
    report = import_roster(session, make_csv(tmp_path / "csv", full_rows()))
    session.commit()
    assert all(c["未变"] == FULL_COUNTS[s] for s, c in report.counts.items())
    assert raw_rows(session) == before


def test_changes_are_reported_as_updates(session, tmp_path):
    import_roster(session, make_xlsx(tmp_path / "a.xlsx", full_rows()))
    session.commit()
    rows = full_rows()
    rows["学生"][1][1] = "李四四"          # renamed
    rows["学生"].append([2023010103, "新同学", "CS2301", None])
    rows["教职工"][3][3] = "体育老师"       # a role dropped
    rows["班级"][1][4] = "T004"            # a head teacher assigned
    rows["校历"][1][3] = "2026-07-12"      # term ends later
    report = import_roster(session, make_xlsx(tmp_path / "b.xlsx", rows))
    session.commit()
    assert report.counts["学生"] == {"新增": 1, "更新": 1, "未变": 2}
    assert report.counts["教职工"] == {"新增": 0, "更新": 1, "未变": 4}
    assert report.counts["班级"] == {"新增": 0, "更新": 1, "未变": 1}
    assert report.counts["校历"] == {"新增": 0, "更新": 1, "未变": 1}
    assert report.counts["系部"] == {"新增": 0, "更新": 0, "未变": 2}
    snap = snapshot(session)
    assert ("2023010102", "李四四", "CS2301", None) in snap["student"]
    assert ("T004", "钱老师", None, "体育老师", "机电工程系") in snap["staff"]
    assert ("ME2401", "机电2401", "机电工程系", 2024, "T004", "T003") in snap["class"]
    assert snap["semester"][1][3] == date(2026, 7, 12)


def test_english_headers(session, tmp_path):
    report = import_roster(session, make_xlsx(tmp_path / "en.xlsx", full_rows(), headers=ENGLISH))
    assert report.counts == created(FULL_COUNTS)
    assert snapshot(session) == EXPECTED


def test_english_sheet_names_and_noted_headers(session, tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Students"
    ws.append(["2024级学生名单"])                     # a title row above the header
    ws.append(["学号*", "姓名（必填）", "班级编号", "备注"])
    ws.append([2024020102, "赵六", "ME2401", "转专业"])
    path = tmp_path / "s.xlsx"
    wb.save(path)
    import_roster(session, make_xlsx(tmp_path / "base.xlsx", full_rows()))
    report = import_roster(session, path)
    assert report.counts == {"学生": {"新增": 1, "更新": 0, "未变": 0}}
    student = session.scalar(select(Student).where(Student.student_no == "2024020102"))
    assert student.name == "赵六" and student.school_class.code == "ME2401"


def test_numeric_student_number_is_text(session, tmp_path):
    path = make_xlsx(tmp_path / "r.xlsx", full_rows())
    sheets = read_roster(path)
    numbers = [r["学号"] for r in sheets["学生"]]
    assert numbers == ["2023010101", "2023010102", "2024020101"]
    assert [r.row for r in sheets["学生"]] == [2, 3, 4]
    assert "说明" not in sheets
    import_roster(session, path)
    assert session.scalar(select(Student.student_no).where(Student.name == "李四")) == "2023010102"
    assert session.scalar(select(SchoolClass.grade).where(SchoolClass.code == "CS2301")) == 2023


def test_calendar_rows_land_in_semester_table(session, tmp_path):
    rows = {"校历": [
        ["2024-2025", "一", "2024.9.2", "2025年1月19日"],
        ["2024-2025学年", "第2学期", 45712, "20250713"],   # 45712 is an Excel day number: 2025-02-24
        ["2025-26", "第一学期", date(2025, 9, 1), "2026-01-18 00:00:00"],
    ]}
    report = import_roster(session, make_xlsx(tmp_path / "cal.xlsx", rows))
    assert report.counts == created({"校历": 3})
    assert snapshot(session)["semester"] == [
        ("2024-2025", 1, date(2024, 9, 2), date(2025, 1, 19)),
        ("2024-2025", 2, date(2025, 2, 24), date(2025, 7, 13)),
        ("2025-2026", 1, date(2025, 9, 1), date(2026, 1, 18)),
    ]


def test_roles_with_mixed_separators(session, tmp_path):
    roles, unknown = parse_roles("管理员、班主任,任课老师，辅导员;学工办；教研室  体育老师 、系部主任,院领导")
    assert unknown == []
    assert roles == ["班主任", "任课教师", "辅导员", "学工办", "教研室", "体育老师", "系部主任", "院领导", "管理员"]
    assert parse_roles("任课教师、任课老师") == (["任课教师"], [])
    assert parse_roles("班主任；校长") == (["班主任"], ["校长"])
    rows = {"教职工": [["T009", "周老师", None, "辅导员；班主任，任课老师", None]]}
    import_roster(session, make_xlsx(tmp_path / "roles.xlsx", rows))
    assert session.scalar(select(Staff.roles).where(Staff.staff_no == "T009")) == "班主任,任课教师,辅导员"


def test_value_parsers():
    assert parse_date("2025/9/1") == date(2025, 9, 1)
    assert parse_date("2025-02-30") is None
    assert parse_date("明天") is None
    assert parse_year("2025－2026") == "2025-2026"   # full-width hyphen
    assert parse_year("2025-2027") is None
    assert parse_term("第二学期") == 2 and parse_term("3") is None


# ---------------------------------------------------------------- partial files


def test_only_students_sheet_leaves_the_rest(session, tmp_path):
    import_roster(session, make_xlsx(tmp_path / "a.xlsx", full_rows()))
    session.commit()
    before = snapshot(session)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "学生"
    ws.append(["学号", "姓名", "班级编号"])              # no 企业微信账号 column: accounts kept
    ws.append([2023010101, "张三丰", "CS2301"])
    wb.save(tmp_path / "b.xlsx")
    report = import_roster(session, tmp_path / "b.xlsx")
    session.commit()
    assert report.counts == {"学生": {"新增": 0, "更新": 1, "未变": 0}}
    after = snapshot(session)
    assert ("2023010101", "张三丰", "CS2301", "zhangsan") in after["student"]
    assert {k: v for k, v in after.items() if k != "student"} == \
        {k: v for k, v in before.items() if k != "student"}


def test_wecom_accounts_can_move_between_people(session, tmp_path):
    import_roster(session, make_xlsx(tmp_path / "a.xlsx", full_rows()))
    session.commit()
    rows = {"学生": [
        [2023010101, "张三", "CS2301", "wangwu"],     # the two swap accounts
        [2024020101, "王五", "ME2401", "zhangsan"],
        [2023010102, "李四", "CS2301", None],
    ]}
    report = import_roster(session, make_xlsx(tmp_path / "b.xlsx", rows))
    session.commit()
    assert report.counts == {"学生": {"新增": 0, "更新": 2, "未变": 1}}
    snap = snapshot(session)["student"]
    assert ("2023010101", "张三", "CS2301", "wangwu") in snap
    assert ("2024020101", "王五", "ME2401", "zhangsan") in snap
    # Clearing an account is a change too.
    rows["学生"][0][3] = None
    report = import_roster(session, make_xlsx(tmp_path / "c.xlsx", rows))
    assert report.counts == {"学生": {"新增": 0, "更新": 1, "未变": 2}}


def test_ids_that_collide_with_someone_else_are_imported_with_a_warning(session, tmp_path):
    assert import_roster(session, make_xlsx(tmp_path / "a.xlsx", full_rows())).warnings == []
    session.commit()
    rows = {
        "教职工": [["2024020101", "周老师", None, "任课教师", "信息工程系"],  # also 王五's 学号
                 ["T006", "吴老师", "T006", "任课教师", "信息工程系"]],  # their own 工号 as account: fine
        "学生": [[2023010103, "孙悟", "CS2301", "t004"]],  # 钱老师's 工号 (T004), in another case
    }
    report = import_roster(session, make_xlsx(tmp_path / "b.xlsx", rows))
    session.commit()
    assert report.counts == created({"教职工": 2, "学生": 1})
    assert worded(report.warnings) == [
        "提醒：周老师（工号2024020101，教职工 第2行）与王五（学号2024020101，数据库中已有）的编号“2024020101”相同，"
        "企业微信中不会按此编号识别他们。",
        "提醒：钱老师（工号T004，数据库中已有）的工号“T004”是孙悟（学号2023010103，学生 第2行）的企业微信账号，"
        "企业微信中不会按此工号识别钱老师。",
    ]
    assert summary(report).splitlines()[2:] == worded(report.warnings)
    assert ("2023010103", "孙悟", "CS2301", "t004") in snapshot(session)["student"]


def test_template_has_six_sheets_and_imports_as_nothing(session, tmp_path):
    path = tmp_path / "template.xlsx"
    write_template(path)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["系部", "班级", "教职工", "学生", "任课", "校历"]
    for name, headers in HEADERS.items():
        assert [c.value for c in wb[name][1]] == headers
    report = import_roster(session, path)
    assert report.counts == {s: {"新增": 0, "更新": 0, "未变": 0}
                             for s in ["系部", "教职工", "班级", "学生", "任课", "校历"]}
    assert row_count(session) == 0


# ---------------------------------------------------------------- errors


def bad_rows() -> dict[str, list[list]]:
    rows = full_rows()
    rows["教职工"][2][3] = "辅导员、校长"                           # 教职工 row 4: unknown role
    rows["教职工"][3][1] = None                                      # 教职工 row 5: no name
    rows["班级"][0][3] = "23"                                        # 班级 row 2: bad grade
    rows["班级"][1][5] = "T099"                                      # 班级 row 3: unknown counsellor
    rows["学生"].append([2023010101, "张三", "CS2301", None])         # 学生 row 5: duplicate
    rows["学生"].append([2023010199, "错班", "计算机2399", None])      # 学生 row 6: unknown class
    rows["学生"].append([2023010198, "撞号", "CS2301", "LiLS"])       # 学生 row 7: 李老师's account
    rows["校历"][1][3] = "2026-02-01"                                # 校历 row 3: ends before start
    rows["校历"].append(["2026-2027", "3", "2026-09-01", "2027-01-17"])  # 校历 row 4: bad term
    rows["校历"].append(["2024-2025", 2, "2025-02-17", "2025-09-05"])    # 校历 row 5: overlaps row 2
    rows["系部"].append(["艺术系", "T404"])                           # 系部 row 4: unknown head
    return rows


EXPECTED_ERRORS = [
    "系部 第4行 系部主任工号：工号“T404”不存在",
    "班级 第2行 年级：“23”应为四位年份，如2024",
    "班级 第3行 辅导员工号：工号“T099”不存在",
    "教职工 第3行 企业微信账号：“lils”已被学生撞号（学号2023010198，学生 第7行）使用",
    "教职工 第4行 角色：未知角色“校长”",
    "教职工 第5行 姓名：不能为空",
    "学生 第5行 学号：与第2行重复",
    "学生 第6行 班级编号：班级“计算机2399”不存在",
    "学生 第7行 企业微信账号：“LiLS”已被教职工李老师（工号T002，教职工 第3行）使用",
    "校历 第3行 结束日期：结束日期2026-02-01早于开始日期2026-02-23",
    "校历 第4行 学期：“3”应为1或2",
    "校历 第5行 开始日期：2025-02-17至2025-09-05与2025-2026学年第一学期（2025-09-01至2026-01-18，第2行）重叠",
    "校历 第2行 开始日期：2025-09-01至2026-01-18与2024-2025学年第二学期（2025-02-17至2025-09-05，第5行）重叠",
]


def assert_errors(errors: list[str], expected: list[str]) -> None:
    for want in expected:
        assert any(e.startswith(want) for e in errors), f"missing: {want}\nin: {errors}"
    assert len(errors) == len(expected), errors


def test_error_file_writes_nothing_and_names_each_error(session, tmp_path):
    with pytest.raises(RosterError) as exc:
        import_roster(session, make_xlsx(tmp_path / "bad.xlsx", bad_rows()))
    session.rollback()
    assert_errors(worded(exc.value.problems), EXPECTED_ERRORS)
    for message in worded(exc.value.problems):
        sheet, row, rest = message.split(" ", 2)
        assert sheet in HEADERS and row.startswith("第") and row.endswith("行")
        assert rest.split("：", 1)[0] in HEADERS[sheet]
    assert row_count(session) == 0


def test_error_file_leaves_existing_rows_alone(session, tmp_path):
    import_roster(session, make_xlsx(tmp_path / "a.xlsx", full_rows()))
    session.commit()
    before = raw_rows(session)
    rows = full_rows()
    rows["学生"][0][1] = "改了名"                       # a valid change …
    rows["学生"].append([2023010105, None, "CS2301", None])   # … next to an error
    with pytest.raises(RosterError) as exc:
        import_roster(session, make_xlsx(tmp_path / "b.xlsx", rows))
    assert not session.new and not session.dirty
    session.rollback()
    assert worded(exc.value.problems) == ["学生 第5行 姓名：不能为空"]
    assert raw_rows(session) == before


def test_missing_columns_are_named(session, tmp_path):
    headers = {**HEADERS, "任课": ["工号", "班级编号"], "学生": ["学号", "name"]}
    rows = {"任课": [["T002", "CS2301"]], "学生": [[2023010101, "张三"]]}
    with pytest.raises(RosterError) as exc:
        import_roster(session, make_xlsx(tmp_path / "cols.xlsx", rows, headers=headers))
    assert worded(exc.value.problems) == ["学生 第1行 班级编号：缺少必填列", "任课 第1行 课程：缺少必填列"]


def test_references_to_database_rows_and_accounts_in_database(session, tmp_path):
    import_roster(session, make_xlsx(tmp_path / "a.xlsx", full_rows()))
    session.commit()
    rows = {
        "学生": [[2025010101, "新生", "CS2301", None],          # class only in the database: fine
                 [2025010102, "冒名", "CS2301", "wangzr"]],     # 王主任's account, in the database
        "任课": [["T003", "ME2401", "心理健康"]],
    }
    with pytest.raises(RosterError) as exc:
        import_roster(session, make_xlsx(tmp_path / "b.xlsx", rows))
    assert worded(exc.value.problems) == [
        "学生 第3行 企业微信账号：“wangzr”已被教职工王主任（工号T001，数据库中已有）使用"]
    session.rollback()
    rows["学生"][1][3] = "maoming"
    report = import_roster(session, make_xlsx(tmp_path / "c.xlsx", rows))
    assert report.counts == created({"学生": 2, "任课": 1})


def test_overlap_with_semester_in_database(session, tmp_path):
    import_roster(session, make_xlsx(tmp_path / "a.xlsx", {"校历": full_rows()["校历"]}))
    session.commit()
    rows = {"校历": [["2026-2027", 1, "2026-07-01", "2027-01-17"]]}
    with pytest.raises(RosterError) as exc:
        import_roster(session, make_xlsx(tmp_path / "b.xlsx", rows))
    assert worded(exc.value.problems) == [
        "校历 第2行 开始日期：2026-07-01至2027-01-17与2025-2026学年第二学期"
        "（2026-02-23至2026-07-10，数据库中已有）重叠"]
    # Moving the database's semester in the same file resolves it.
    rows["校历"].append(["2025-2026", 2, "2026-02-23", "2026-06-30"])
    report = import_roster(session, make_xlsx(tmp_path / "c.xlsx", rows))
    assert report.counts == {"校历": {"新增": 1, "更新": 1, "未变": 0}}


def test_unreadable_inputs(session, tmp_path):
    with pytest.raises(RosterError) as exc:
        import_roster(session, tmp_path / "nope.xlsx")
    assert worded(exc.value.problems) == [f"找不到文件：{tmp_path / 'nope.xlsx'}"]
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(RosterError) as exc:
        import_roster(session, tmp_path / "old.xls")
    assert worded(exc.value.problems) == ["不支持的文件格式：old.xls（请使用 .xlsx 工作簿或 .csv 文件夹）"]
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip")
    with pytest.raises(RosterError) as exc:
        import_roster(session, tmp_path / "broken.xlsx")
    assert worded(exc.value.problems)[0].startswith("无法读取工作簿 broken.xlsx：")


def test_report_summary_format():
    report = ImportReport({"学生": {"新增": 3, "更新": 1, "未变": 10}, "任课": {"新增": 0, "更新": 0, "未变": 2}})
    assert summary(report) == "学生：新增 3，更新 1，未变 10\n任课：新增 0，更新 0，未变 2"
