"""The roster workbook (PRODUCT.md §5) read: its six sheets, their columns, and the values in them.

An .xlsx workbook or a folder of .csv files becomes canonical sheets of text rows; checking
them is models/io/roster_check.py, writing them models/io/roster.py.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from models.catalogue import ROLES
from models.io.sheets import (
    Sheet,
    SheetError,
    SheetSpec,
    build_sheet,
    cell_text,
    csv_rows,
    file_problem,
    header_key,
    header_map,
    open_workbook,
    worksheet_rows,
)
from models.problems import Problem

DEPT, CLASS, STAFF, STUDENT, TEACH, CAL = "系部", "班级", "教职工", "学生", "任课", "校历"
# Order of PRODUCT.md (template, error listing) and order of writing (references first).
SHEETS = (DEPT, CLASS, STAFF, STUDENT, TEACH, CAL)
WRITE_ORDER = (DEPT, STAFF, CLASS, STUDENT, TEACH, CAL)

ROLE_ALIASES = {"任课老师": "任课教师", "体育教师": "体育老师"}
ROLE_SEPARATORS = re.compile(r"[、,，;；\s]+")

SPECS: dict[str, SheetSpec] = {
    DEPT: SheetSpec(
        DEPT, ("系部名称", "系部主任工号"), ("系部名称",),
        {"系部名称": ("department", "name", "department_name", "系部"),
         "系部主任工号": ("head_staff_no", "head_no")},
        ("department", "departments"),
        {"系部名称": 64, "系部主任工号": 32}),
    CLASS: SheetSpec(
        CLASS, ("班级编号", "班级名称", "系部", "年级", "班主任工号", "辅导员工号"),
        ("班级编号", "班级名称", "系部"),
        {"班级编号": ("class_code", "code"), "班级名称": ("class_name", "name"),
         "系部": ("department", "系部名称"), "年级": ("grade",),
         "班主任工号": ("head_teacher_no",), "辅导员工号": ("counsellor_no", "counselor_no")},
        ("class", "classes"),
        {"班级编号": 32, "班级名称": 64}),
    STAFF: SheetSpec(
        STAFF, ("工号", "姓名", "企业微信账号", "角色", "系部"), ("工号", "姓名"),
        {"工号": ("staff_no",), "姓名": ("name",), "企业微信账号": ("wecom_userid", "userid"),
         "角色": ("roles", "role"), "系部": ("department", "系部名称")},
        ("staff",),
        {"工号": 32, "姓名": 64, "企业微信账号": 64}),
    STUDENT: SheetSpec(
        STUDENT, ("学号", "姓名", "班级编号", "企业微信账号"), ("学号", "姓名", "班级编号"),
        {"学号": ("student_no",), "姓名": ("name",), "班级编号": ("class_code",),
         "企业微信账号": ("wecom_userid", "userid")},
        ("student", "students"),
        {"学号": 32, "姓名": 64, "企业微信账号": 64}),
    TEACH: SheetSpec(
        TEACH, ("工号", "班级编号", "课程"), ("工号", "班级编号", "课程"),
        {"工号": ("staff_no",), "班级编号": ("class_code",), "课程": ("course",)},
        ("teaching", "teaching_assignments", "assignments", "courses"),
        {"课程": 64}),
    CAL: SheetSpec(
        CAL, ("学年", "学期", "开始日期", "结束日期"), ("学年", "学期", "开始日期", "结束日期"),
        {"学年": ("year",), "学期": ("term", "semester"), "开始日期": ("start_date", "start"),
         "结束日期": ("end_date", "end")},
        ("calendar", "semesters"),
        {}),
}
# Columns holding codes: a text cell "2023010101.0" (a CSV saved from Excel) loses its ".0".
CODE_COLUMNS = frozenset({"系部主任工号", "班级编号", "年级", "班主任工号", "辅导员工号", "工号", "学号"})

HEADER_MAPS = {name: header_map(spec) for name, spec in SPECS.items()}
SHEET_NAMES = {header_key(alias): name for name, spec in SPECS.items()
               for alias in (name, *spec.sheet_aliases)}


class RosterError(SheetError):
    """The roster file is wrong; `problems` names sheet, row and column of each."""


def sheet_name_of(raw: str) -> str | None:
    """The canonical sheet a sheet (or .csv file) name stands for; None for other sheets."""
    return SHEET_NAMES.get(header_key(raw))


def _build(name: str, rows: Iterable[tuple[int, list[Any]]]) -> Sheet | None:
    return build_sheet(name, HEADER_MAPS[name], rows, CODE_COLUMNS)


def _read_xlsx(path: Path) -> dict[str, Sheet]:
    wb = open_workbook(path, RosterError)
    try:
        out: dict[str, Sheet] = {}
        problems: list[Problem] = []
        for ws in wb.worksheets:
            name = sheet_name_of(ws.title)
            if name is None:
                continue
            sheet = _build(name, worksheet_rows(ws))
            if sheet is None:
                continue  # an empty sheet is as good as an absent one
            if name in out:
                problems.append(Problem("sheet_twice", {"sheet": name, "titles": [ws.title]}))
                continue
            out[name] = sheet
        if problems:
            raise RosterError(problems)
        return out
    finally:
        wb.close()


def _read_csv_files(files: list[Path]) -> dict[str, Sheet]:
    out: dict[str, Sheet] = {}
    problems: list[Problem] = []
    for f in sorted(files):
        name = sheet_name_of(f.stem)
        if name is None:
            continue
        try:
            sheet = _build(name, csv_rows(f))
        except SheetError as exc:
            problems.extend(exc.problems)
            continue
        except csv.Error as exc:
            problems.append(Problem("sheet_csv_invalid", {"name": f.name, "reason": str(exc)}))
            continue
        if sheet is None:
            continue
        if name in out:
            problems.append(Problem("sheet_twice", {"sheet": name, "titles": [f.name]}))
            continue
        out[name] = sheet
    if problems:
        raise RosterError(problems)
    return out


def read_sheets(p: Path) -> dict[str, Sheet]:
    """Sheets by canonical name; other sheets, and sheets with nothing in them, are left out."""
    if p.is_dir():
        return _read_csv_files([f for f in p.iterdir() if f.suffix.lower() == ".csv" and f.is_file()])
    if (problem := file_problem(p, folders=True)) is not None:
        raise RosterError(problem)
    if p.suffix.lower() == ".csv":
        return _read_csv_files([p])
    return _read_xlsx(p)


def read_roster(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Read an .xlsx workbook or a folder of .csv files into sheet -> rows (each a `Row`)."""
    return dict(read_sheets(Path(path)))


# ---------------------------------------------------------------- values


def parse_roles(text: str) -> tuple[list[str], list[str]]:
    """Split a 角色 cell: (canonical roles in canonical order, unknown words)."""
    found: set[str] = set()
    unknown: list[str] = []
    for word in ROLE_SEPARATORS.split(cell_text(text)):
        if not word:
            continue
        role = ROLE_ALIASES.get(word, word)
        if role in ROLES:
            found.add(role)
        elif word not in unknown:
            unknown.append(word)
    return [r for r in ROLES if r in found], unknown


def parse_year(text: str) -> str | None:
    """学年 as "2025-2026" (also 2025—2026, 2025-26, 2025-2026学年); else None."""
    text = cell_text(text).removesuffix("学年").strip()
    m = re.fullmatch(r"(\d{4})\s*[-–—~至/]\s*(\d{2}|\d{4})", text)
    if not m:
        return None
    first, second = int(m[1]), m[2]
    expected = str(first + 1)
    if second != expected and second != expected[2:]:
        return None
    return f"{first}-{first + 1}"


def parse_term(text: str) -> int | None:
    """学期 1 or 2 (also 一/二, 第一学期, 上/下, 秋季/春季); else None."""
    text = cell_text(text).removeprefix("第").removesuffix("学期").removesuffix("季").strip()
    return {"1": 1, "一": 1, "上": 1, "秋": 1, "2": 2, "二": 2, "下": 2, "春": 2}.get(text)


def parse_grade(text: str) -> int | None:
    """年级 as a 4-digit year (2023 or 2023级); else None."""
    text = cell_text(text).removesuffix("级").strip()
    return int(text) if re.fullmatch(r"(19|20)\d\d", text) else None

