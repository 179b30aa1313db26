"""Roster import: the 系部 / 班级 / 教职工 / 学生 / 任课 / 校历 workbook (PRODUCT.md §5).

All-or-nothing: every sheet and row is checked first (models/io/roster_check.py) and every
problem collected; only a clean file is written. Rows are upserted by their key; sheets absent
from the file, and optional columns absent from a sheet, are left untouched. Nothing is ever
deleted. The result is a value: the CLI words it (templates/cli/import_report.txt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.io.roster_check import RosterCheck, id_collisions
from models.io.roster_read import (
    CAL,
    CLASS,
    CODE_COLUMNS,
    DEPT,
    SHEETS,
    SPECS,
    STAFF,
    STUDENT,
    TEACH,
    WRITE_ORDER,
    RosterError,
    read_sheets,
)
from models.problems import Problem
from models.schema import Department, SchoolClass, Semester, Staff, Student, TeachingAssignment

NEW, UPDATED, SAME = "新增", "更新", "未变"

__all__ = ["NEW", "SAME", "UPDATED", "ImportReport", "RosterError", "import_roster", "write_template"]


@dataclass
class ImportReport:
    """Counts of created / updated / unchanged rows per sheet (only sheets in the file), and warnings."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)  # imported all the same: the roster should be fixed


def _set(obj: object, changes: dict[str, Any]) -> bool:
    """Apply changes to an existing row; True if any value differed."""
    changed = False
    for attr, value in changes.items():
        if getattr(obj, attr) != value:
            setattr(obj, attr, value)
            changed = True
    return changed


class _Writer:
    """Writes checked rows in reference order; counts what happened."""

    def __init__(self, checker: RosterCheck) -> None:
        self.c = checker
        self.session = checker.session
        self.report = ImportReport({name: {NEW: 0, UPDATED: 0, SAME: 0}
                                    for name in WRITE_ORDER if name in checker.sheets})
        self.released: set[int] = set()  # id() of rows whose 企业微信账号 was unset first

    def count(self, sheet: str, outcome: str) -> None:
        self.report.counts[sheet][outcome] += 1

    def has(self, sheet: str, col: str) -> bool:
        return col in self.c.sheets[sheet].headers

    def upsert(self, sheet: str, existing: Any, make: type, fields: dict[str, Any]) -> Any:  # noqa: ANN401
        if existing is None:
            obj = make(**fields)
            self.session.add(obj)
            self.count(sheet, NEW)
            return obj
        changed = _set(existing, fields) or id(existing) in self.released
        self.count(sheet, UPDATED if changed else SAME)
        return existing

    def run(self) -> ImportReport:
        self._release_wecom()
        steps = {DEPT: self._departments, STAFF: self._staff, CLASS: self._classes,
                 STUDENT: self._students, TEACH: self._teaching, CAL: self._calendar}
        for sheet in WRITE_ORDER:
            if sheet in self.c.sheets:
                steps[sheet]()
                self.session.flush()
        return self.report

    def _release_wecom(self) -> None:
        """Unset 企业微信账号 values that move between people, so unique indexes never clash mid-way."""
        released = False
        for sheet, key_col, db in ((STAFF, "工号", self.c.db_staff), (STUDENT, "学号", self.c.db_students)):
            if sheet not in self.c.sheets or not self.has(sheet, "企业微信账号"):
                continue
            for rec in self.c.recs[sheet]:
                obj = db.get(rec.values[key_col])
                if obj is not None and obj.wecom_userid and obj.wecom_userid != rec.values["企业微信账号"]:
                    obj.wecom_userid = None
                    self.released.add(id(obj))
                    released = True
        if released:
            self.session.flush()

    def _departments(self) -> None:
        for rec in self.c.recs[DEPT]:
            v = rec.values
            fields: dict[str, Any] = {"name": v["系部名称"]}
            if self.has(DEPT, "系部主任工号"):
                fields["head_staff_no"] = v["系部主任工号"]
            self.c.db_depts[v["系部名称"]] = self.upsert(
                DEPT, self.c.db_depts.get(v["系部名称"]), Department, fields)

    def _staff(self) -> None:
        depts = self.c.db_depts
        for rec in self.c.recs[STAFF]:
            v = rec.values
            fields: dict[str, Any] = {"staff_no": v["工号"], "name": v["姓名"]}
            if self.has(STAFF, "企业微信账号"):
                fields["wecom_userid"] = v["企业微信账号"]
            if self.has(STAFF, "角色"):
                fields["roles"] = v["角色"] or ""
            if self.has(STAFF, "系部"):
                fields["department_id"] = depts[v["系部"]].id if v["系部"] else None
            existing = self.c.db_staff.get(v["工号"])
            if existing is None:
                fields.setdefault("roles", "")
            self.c.db_staff[v["工号"]] = self.upsert(STAFF, existing, Staff, fields)

    def _classes(self) -> None:
        staff, depts = self.c.db_staff, self.c.db_depts
        for rec in self.c.recs[CLASS]:
            v = rec.values
            fields: dict[str, Any] = {"code": v["班级编号"], "name": v["班级名称"],
                                      "department_id": depts[v["系部"]].id}
            if self.has(CLASS, "年级"):
                fields["grade"] = v["年级"]
            for col, attr in (("班主任工号", "head_teacher_id"), ("辅导员工号", "counsellor_id")):
                if self.has(CLASS, col):
                    fields[attr] = staff[v[col]].id if v[col] else None
            self.c.db_classes[v["班级编号"]] = self.upsert(
                CLASS, self.c.db_classes.get(v["班级编号"]), SchoolClass, fields)

    def _students(self) -> None:
        classes = self.c.db_classes
        for rec in self.c.recs[STUDENT]:
            v = rec.values
            fields: dict[str, Any] = {"student_no": v["学号"], "name": v["姓名"],
                                      "class_id": classes[v["班级编号"]].id}
            if self.has(STUDENT, "企业微信账号"):
                fields["wecom_userid"] = v["企业微信账号"]
            self.c.db_students[v["学号"]] = self.upsert(
                STUDENT, self.c.db_students.get(v["学号"]), Student, fields)

    def _teaching(self) -> None:
        existing = {(a.staff_id, a.class_id, a.course): a
                    for a in self.session.scalars(select(TeachingAssignment))}
        for rec in self.c.recs[TEACH]:
            v = rec.values
            key = (self.c.db_staff[v["工号"]].id, self.c.db_classes[v["班级编号"]].id, v["课程"])
            fields = {"staff_id": key[0], "class_id": key[1], "course": key[2]}
            existing[key] = self.upsert(TEACH, existing.get(key), TeachingAssignment, fields)

    def _calendar(self) -> None:
        for rec in self.c.recs[CAL]:
            v = rec.values
            key = (v["学年"], v["学期"])
            fields = {"year": key[0], "term": key[1], "start": v["开始日期"], "end": v["结束日期"]}
            self.c.db_semesters[key] = self.upsert(CAL, self.c.db_semesters.get(key), Semester, fields)


def import_roster(session: Session, path: str | Path) -> ImportReport:
    """Check the whole roster file, then upsert it; raise RosterError (writing nothing) on any error."""
    check = RosterCheck(session, read_sheets(Path(path)))
    check.run()
    if check.found:
        raise RosterError(check.problems())
    report = _Writer(check).run()
    report.warnings = id_collisions(session, check)
    return report


# ---------------------------------------------------------------- template


def write_template(path: str | Path) -> None:
    """Write an empty roster workbook: the six sheets with their Chinese headers."""
    from openpyxl import Workbook  # noqa: PLC0415
    from openpyxl.styles import Font  # noqa: PLC0415
    from openpyxl.utils import get_column_letter  # noqa: PLC0415

    wb = Workbook()
    wb.remove(wb.active)
    for name in SHEETS:
        ws = wb.create_sheet(name)
        ws.append(list(SPECS[name].columns))
        for i, col in enumerate(SPECS[name].columns, start=1):
            ws.cell(row=1, column=i).font = Font(bold=True)
            letter = get_column_letter(i)
            ws.column_dimensions[letter].width = max(12, 3 * len(col) + 4)
            if col in CODE_COLUMNS or col == "企业微信账号":
                # Text format, so Excel keeps 学号 and 工号 as typed (no 2.02301E+09).
                ws.column_dimensions[letter].number_format = "@"
        ws.freeze_panes = "A2"
    wb.save(Path(path))
