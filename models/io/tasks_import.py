"""The 任务 sheet (任务分解表) imported: read, checked as a whole, then upserted by 编号.

The sheet is read with the shared reader (models/io/sheets.py: same header rules as the roster)
and problems take the same form (sheet, row, column; templates/errors/sheet_*.txt, tasks_*.txt).
Nothing is written unless all of the file is right; an optional column absent from the file is
left as it is.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.io.roster import NEW, SAME, UPDATED, ImportReport, RosterError
from models.io.sheets import (
    Sheet,
    SheetError,
    SheetSpec,
    build_sheet,
    csv_rows,
    file_problem,
    header_key,
    header_map,
    open_workbook,
    parse_date,
    worksheet_rows,
)
from models.problems import Problem
from models.schema import PlanTask, Staff
from models.tasks import CODE_MAX, OPEN, cycle_of

TASKS = "任务"
TASK_SPEC = SheetSpec(
    TASKS,
    ("编号", "任务", "层面", "负责人工号", "督办人工号", "开始日期", "截止日期", "年度"),
    ("编号", "任务", "负责人工号", "截止日期"),
    {"编号": ("code", "task_code", "task_no", "number", "序号"),
     "任务": ("task", "title", "任务名称", "工作任务"),
     "层面": ("level", "layer"),
     "负责人工号": ("owner_no", "owner_staff_no"),
     "督办人工号": ("supervisor_no", "supervisor_staff_no"),
     "开始日期": ("start_date", "start"),
     "截止日期": ("due_date", "due", "deadline", "end_date"),
     "年度": ("cycle", "year", "plan_year", "计划年度")},
    ("tasks", "task", "任务分解表", "任务分解", "工作任务分解表", "年度要点工作任务分解表"),
    {"编号": CODE_MAX, "层面": 32, "负责人工号": 32, "督办人工号": 32},
)
# Aliases stay clear of headers a 任务分解表 often has beside these (负责人 with names, 任务内容,
# 完成时限 in words), which would otherwise read as a duplicate column.
STAFF_COLUMNS = ("负责人工号", "督办人工号")
HEADERS = header_map(TASK_SPEC)
SHEET_KEYS = {header_key(n) for n in (TASKS, *TASK_SPEC.sheet_aliases)}


class TaskImportError(RosterError):
    """The task file is wrong; `problems` names sheet, row and column of each."""


def _refused(code: str, **fields: Any) -> TaskImportError:  # noqa: ANN401
    return TaskImportError(Problem(code, fields))


# ---------------------------------------------------------------- reading


def _is_task_sheet(name: str) -> bool:
    return header_key(name) in SHEET_KEYS


def _read_xlsx(path: Path) -> Sheet | None:
    wb = open_workbook(path, TaskImportError)
    try:
        sheets = [ws for ws in wb.worksheets if _is_task_sheet(ws.title)]
        if not sheets and len(wb.worksheets) == 1:
            sheets = list(wb.worksheets)  # a one-sheet workbook is the task sheet, whatever its name
        if not sheets:
            raise _refused("tasks_no_sheet", name=path.name, sheet=TASKS)
        if len(sheets) > 1:
            raise _refused("sheet_twice", sheet=TASKS, titles=[ws.title for ws in sheets])
        return build_sheet(TASKS, HEADERS, worksheet_rows(sheets[0]))
    finally:
        wb.close()


def _read_csv(path: Path) -> Sheet | None:
    try:
        return build_sheet(TASKS, HEADERS, csv_rows(path))
    except SheetError as exc:
        raise TaskImportError(exc.problems) from exc
    except csv.Error as exc:
        raise _refused("sheet_csv_invalid", name=path.name, reason=str(exc)) from exc


def read_task_sheet(path: str | Path) -> Sheet | None:
    """The 任务 sheet of an .xlsx workbook, a .csv file or a folder holding 任务.csv (None if empty)."""
    p = Path(path)
    if p.is_dir():
        files = [f for f in sorted(p.iterdir())
                 if f.is_file() and f.suffix.lower() == ".csv" and _is_task_sheet(f.stem)]
        if not files:
            raise _refused("tasks_no_csv", name=p.name, sheet=TASKS)
        if len(files) > 1:
            raise _refused("sheet_twice", sheet=TASKS, titles=[f.name for f in files])
        return _read_csv(files[0])
    if (problem := file_problem(p, folders=False)) is not None:
        raise TaskImportError(problem)
    return _read_csv(p) if p.suffix.lower() == ".csv" else _read_xlsx(p)


# ---------------------------------------------------------------- checking


def _parse_year(text: str) -> int | None:
    text = text.removesuffix("年度").removesuffix("年").strip()
    return int(text) if re.fullmatch(r"20\d\d", text) else None


@dataclass
class _Row:
    """A checked row: parsed values by column."""

    row: int
    values: dict[str, Any]


class _Checker:
    """Every check of the task sheet, collecting problems by row and column."""

    def __init__(self, session: Session, sheet: Sheet) -> None:
        self.sheet = sheet
        self.found: list[tuple[tuple[int, int], Problem]] = []
        self.staff = {s.staff_no: s for s in session.scalars(select(Staff))}
        self.staff_by_name: dict[str, list[Staff]] = {}
        for s in self.staff.values():
            self.staff_by_name.setdefault(s.name, []).append(s)
        self.rows: list[_Row] = []

    def error(self, row: int, column: str, code: str, **fields: Any) -> None:  # noqa: ANN401
        cols = TASK_SPEC.columns
        self.found.append(((row, cols.index(column) if column in cols else -1),
                           Problem(code, fields, TASKS, row, column)))

    def problems(self) -> list[Problem]:
        return [p for _k, p in sorted(self.found, key=lambda kp: kp[0])]

    def run(self) -> None:
        for row, col, code in self.sheet.errors:
            self.error(row, col, code)
        missing = [c for c in TASK_SPEC.required if c not in self.sheet.headers]
        for col in missing:
            self.error(self.sheet.header_row, col, "sheet_missing_column")
        if missing or self.sheet.errors:
            return
        seen: dict[str, int] = {}
        for row in self.sheet:
            values = self._values(row)
            code = values.get("编号")
            if code is not None:
                if code in seen:
                    self.error(row.row, "编号", "tasks_duplicate_code", value=code, first_row=seen[code])
                    continue
                seen[code] = row.row
            if values.pop("_bad", False):
                continue
            start, due = values.get("开始日期"), values.get("截止日期")
            if start is not None and start > due:
                self.error(row.row, "开始日期", "tasks_starts_after_due", start=start, due=due)
                continue
            self.rows.append(_Row(row.row, values))

    def _values(self, row: dict[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for col in self.sheet.headers:
            text = row.get(col, "")
            if col in STAFF_COLUMNS and re.fullmatch(r"\d+\.0+", text):
                text = text.split(".")[0]  # a CSV saved from Excel writes 1001 as 1001.0
            values[col] = None
            if not text:
                if col in TASK_SPEC.required:
                    self.error(row.row, col, "sheet_empty_cell")
                    values["_bad"] = True
                continue
            limit = TASK_SPEC.max_len.get(col)
            if limit and len(text) > limit:
                self.error(row.row, col, "sheet_too_long", value=text, limit=limit)
                values["_bad"] = True
                continue
            parsed, problem = self._parse(col, text)
            if problem:
                self.error(row.row, col, problem[0], **problem[1])
                values["_bad"] = True
            values[col] = parsed
        return values

    def _parse(self, col: str, text: str) -> tuple[Any, tuple[str, dict[str, Any]] | None]:
        if col in STAFF_COLUMNS:
            if text in self.staff:
                return self.staff[text], None
            named = [s.staff_no for s in self.staff_by_name.get(text, [])]
            return None, ("tasks_unknown_staff", {"value": text, "named": named})
        if col in ("开始日期", "截止日期"):
            d = parse_date(text)
            return d, None if d else ("sheet_bad_date", {"value": text, "example": "2026-06-30"})
        if col == "年度":
            year = _parse_year(text)
            return year, None if year else ("sheet_bad_year", {"value": text, "example": "2026"})
        return text, None


# ---------------------------------------------------------------- writing


def _fields(values: dict[str, Any], headers: list[str]) -> dict[str, Any]:
    """The PlanTask attributes a checked row sets (columns absent from the file are left out)."""
    due: date = values["截止日期"]
    fields: dict[str, Any] = {
        "code": values["编号"], "title": values["任务"], "owner_id": values["负责人工号"].id, "due": due,
        "cycle": values.get("年度") or cycle_of(due),
    }
    if "层面" in headers:
        fields["level"] = values["层面"]
    if "督办人工号" in headers:
        fields["supervisor_id"] = values["督办人工号"].id if values["督办人工号"] else None
    if "开始日期" in headers:
        fields["start"] = values["开始日期"]
    return fields


def import_tasks(session: Session, path: str | Path) -> ImportReport:
    """Check the whole task file, then upsert it by 编号; raise TaskImportError (writing nothing) on any problem."""
    sheet = read_task_sheet(path)
    if sheet is None or not len(sheet):
        raise _refused("tasks_empty_sheet", sheet=TASKS)
    checker = _Checker(session, sheet)
    checker.run()
    if checker.found:
        raise TaskImportError(checker.problems())
    existing = {t.code: t for t in session.scalars(
        select(PlanTask).where(PlanTask.code.in_([r.values["编号"] for r in checker.rows])))}
    counts = {NEW: 0, UPDATED: 0, SAME: 0}
    for rec in checker.rows:
        fields = _fields(rec.values, sheet.headers)
        task = existing.get(fields["code"])
        if task is None:
            session.add(PlanTask(**fields, progress=0, status=OPEN))
            counts[NEW] += 1
            continue
        changed = False
        for attr, value in fields.items():
            if getattr(task, attr) != value:
                setattr(task, attr, value)
                changed = True
        counts[UPDATED if changed else SAME] += 1
    session.flush()
    return ImportReport({TASKS: counts})
