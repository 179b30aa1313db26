"""Plan tasks (任务分解表): the import, the owner's updates and the 整改清单 of unfinished tasks.

The import reads the 任务 sheet with the roster's reader (same header rules, same error
form: sheet, row, column), checks the whole file, and writes nothing unless all of it is
right. Rows are upserted by 编号; an optional column absent from the file is left as it is.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.io import roster
from models.io.roster import (
    NEW,
    SAME,
    UPDATED,
    ImportReport,
    RosterError,
    Sheet,
    SheetSpec,
    parse_date,
)
from models.schema import AuditLog, OutboxMessage, PlanTask, PlanTaskUpdate, Staff, utcnow

TASKS = "任务"
OPEN, DONE, CARRIED = "open", "done", "carried"  # carried: replaced by its 整改 task
RECTIFY = "整改"
# 编号 leaves room for the "-整改2026" suffix of a carried task within the 32-character column.
CODE_MAX = 24

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

# The roster's reader finds headers through this table; the 任务 sheet joins it so the
# same header detection (aliases, notes in brackets, title rows above) applies.
roster.HEADER_MAPS.setdefault(TASKS, roster._header_map(TASK_SPEC))
SHEET_KEYS = {roster._header_key(n) for n in (TASKS, *TASK_SPEC.sheet_aliases)}


class TaskImportError(RosterError):
    """The task file is wrong; `errors` names sheet, row and column of each problem."""


class TaskError(ValueError):
    """An update the rules refuse (a closed task, a percentage out of range); the message is for the user."""


def cycle_of(due: date) -> int:
    """The plan year of a deadline: its year; a January deadline belongs to the year before.

    Table 9 reviews a plan year's outcome in January of the next year (次年1月), so a task
    due in January is judged in that review, with the year it belongs to.
    """
    return due.year - 1 if due.month == 1 else due.year


# ---------------------------------------------------------------- reading


def _is_task_sheet(name: str) -> bool:
    return roster._header_key(name) in SHEET_KEYS


def _read_xlsx(path: Path) -> Sheet | None:
    import openpyxl  # noqa: PLC0415  (only needed for workbooks)

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (zipfile, XML and openpyxl errors alike)
        raise TaskImportError([f"无法读取工作簿 {path.name}：{exc}"]) from exc
    try:
        sheets = [ws for ws in wb.worksheets if _is_task_sheet(ws.title)]
        if not sheets and len(wb.worksheets) == 1:
            sheets = list(wb.worksheets)  # a one-sheet workbook is the task sheet, whatever its name
        if not sheets:
            raise TaskImportError([f"工作簿 {path.name} 中没有“{TASKS}”工作表"])
        if len(sheets) > 1:
            raise TaskImportError([f"{TASKS}：工作表重复（{'、'.join(f'“{ws.title}”' for ws in sheets)}）"])
        rows = ((i, list(r)) for i, r in enumerate(sheets[0].iter_rows(values_only=True), start=1))
        return roster._build_sheet(TASKS, rows)
    finally:
        wb.close()


def _read_csv(path: Path) -> Sheet | None:
    try:
        return roster._build_sheet(TASKS, roster._csv_rows(path))
    except RosterError as exc:
        raise TaskImportError(exc.errors) from exc
    except csv.Error as exc:
        raise TaskImportError([f"{path.name}：CSV 格式错误：{exc}"]) from exc


def read_task_sheet(path: str | Path) -> Sheet | None:
    """The 任务 sheet of an .xlsx workbook, a .csv file or a folder holding 任务.csv (None if empty)."""
    p = Path(path)
    if p.is_dir():
        files = [f for f in sorted(p.iterdir())
                 if f.is_file() and f.suffix.lower() == ".csv" and _is_task_sheet(f.stem)]
        if not files:
            raise TaskImportError([f"文件夹 {p.name} 中没有 {TASKS}.csv"])
        if len(files) > 1:
            raise TaskImportError([f"{TASKS}：工作表重复（{'、'.join(f'“{f.name}”' for f in files)}）"])
        return _read_csv(files[0])
    if not p.exists():
        raise TaskImportError([f"找不到文件：{p}"])
    suffix = p.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return _read_xlsx(p)
    if suffix == ".csv":
        return _read_csv(p)
    raise TaskImportError([f"不支持的文件格式：{p.name}（请使用 .xlsx 工作簿或 .csv 文件）"])


# ---------------------------------------------------------------- checking


def _q(text: str) -> str:
    return f"“{text}”"


def _parse_year(text: str) -> int | None:
    text = text.removesuffix("年度").removesuffix("年").strip()
    return int(text) if re.fullmatch(r"20\d\d", text) else None


@dataclass
class _Row:
    """A checked row: parsed values by column."""

    row: int
    values: dict[str, Any]


class _Checker:
    """Every check of the task sheet, collecting errors as (row, column index, message)."""

    def __init__(self, session: Session, sheet: Sheet) -> None:
        self.sheet = sheet
        self.errors: list[tuple[int, int, str]] = []
        self.staff = {s.staff_no: s for s in session.scalars(select(Staff))}
        self.staff_by_name: dict[str, list[Staff]] = {}
        for s in self.staff.values():
            self.staff_by_name.setdefault(s.name, []).append(s)
        self.rows: list[_Row] = []

    def error(self, row: int, column: str, message: str) -> None:
        cols = TASK_SPEC.columns
        self.errors.append((row, cols.index(column) if column in cols else -1,
                            f"{TASKS} 第{row}行 {column}：{message}"))

    def messages(self) -> list[str]:
        return [m for *_k, m in sorted(self.errors)]

    def run(self) -> None:
        for row, col, msg in self.sheet.errors:
            self.error(row, col, msg)
        missing = [c for c in TASK_SPEC.required if c not in self.sheet.headers]
        for col in missing:
            self.error(self.sheet.header_row, col, "缺少必填列")
        if missing or self.sheet.errors:
            return
        seen: dict[str, int] = {}
        for row in self.sheet:
            values = self._values(row)
            code = values.get("编号")
            if code is not None:
                if code in seen:
                    self.error(row.row, "编号", f"{_q(code)}与第{seen[code]}行重复")
                    continue
                seen[code] = row.row
            if values.pop("_bad", False):
                continue
            start, due = values.get("开始日期"), values.get("截止日期")
            if start is not None and start > due:
                self.error(row.row, "开始日期", f"开始日期{start}晚于截止日期{due}")
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
                    self.error(row.row, col, "不能为空")
                    values["_bad"] = True
                continue
            limit = TASK_SPEC.max_len.get(col)
            if limit and len(text) > limit:
                self.error(row.row, col, f"{_q(text)}超过{limit}个字符")
                values["_bad"] = True
                continue
            parsed, problem = self._parse(col, text)
            if problem:
                self.error(row.row, col, problem)
                values["_bad"] = True
            values[col] = parsed
        return values

    def _parse(self, col: str, text: str) -> tuple[Any, str | None]:
        if col in STAFF_COLUMNS:
            if text in self.staff:
                return self.staff[text], None
            named = self.staff_by_name.get(text, [])
            hint = f"（{text}的工号是{'、'.join(s.staff_no for s in named)}）" if named else ""
            return None, f"工号{_q(text)}不存在{hint}"
        if col in ("开始日期", "截止日期"):
            d = parse_date(text)
            return d, None if d else f"{_q(text)}不是有效日期（如2026-06-30）"
        if col == "年度":
            year = _parse_year(text)
            return year, None if year else f"{_q(text)}应为四位年份，如2026"
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
    """Check the whole task file, then upsert it by 编号; raise TaskImportError (writing nothing) on any error."""
    sheet = read_task_sheet(path)
    if sheet is None or not len(sheet):
        raise TaskImportError([f"{TASKS}：工作表没有任何任务"])
    checker = _Checker(session, sheet)
    checker.run()
    if checker.errors:
        raise TaskImportError(checker.messages())
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


# ---------------------------------------------------------------- queries


def open_tasks_owned(session: Session, staff_id: int) -> list[PlanTask]:
    """The open tasks a person is responsible for (负责人), soonest deadline first."""
    return list(session.scalars(select(PlanTask).where(
        PlanTask.owner_id == staff_id, PlanTask.status == OPEN).order_by(PlanTask.due, PlanTask.id)))


def open_tasks_supervised(session: Session, staff_id: int) -> list[PlanTask]:
    """The open tasks a person supervises (督办人) for someone else, soonest deadline first."""
    return list(session.scalars(select(PlanTask).where(
        PlanTask.supervisor_id == staff_id, PlanTask.owner_id != staff_id, PlanTask.status == OPEN,
    ).order_by(PlanTask.due, PlanTask.id)))


def cycle_tasks(session: Session, cycle: int) -> list[PlanTask]:
    """Every task of a plan year except those already carried into the next one."""
    return list(session.scalars(select(PlanTask).where(
        PlanTask.cycle == cycle, PlanTask.status != CARRIED).order_by(PlanTask.due, PlanTask.id)))


def find_task(session: Session, token: str, staff_id: int | None = None) -> PlanTask | None:
    """A task by #N (its id) or by its 编号, preferring the sender's own tasks.

    `#12` reads as the id first (that is what `任务` shows), a bare `1.2.3` as the 编号 first.
    """
    ref = token.strip()
    by_id_first = ref.startswith("#")
    ref = ref.lstrip("#").strip()
    if not ref:
        return None
    by_id = session.get(PlanTask, int(ref)) if re.fullmatch(r"[0-9]{1,9}", ref) else None
    by_code = session.scalar(select(PlanTask).where(PlanTask.code == ref))
    order = [t for t in ((by_id, by_code) if by_id_first else (by_code, by_id)) if t is not None]
    for task in order:
        if staff_id is not None and staff_id in (task.owner_id, task.supervisor_id):
            return task
    return order[0] if order else None


def carried_into(session: Session, task: PlanTask) -> PlanTask | None:
    """The 整改 task a carried task went into."""
    return session.scalar(select(PlanTask).where(PlanTask.carried_from_id == task.id).limit(1))


# ---------------------------------------------------------------- updates


def _record(session: Session, task: PlanTask, actor: str, kind: str, value: int | None, note: str | None,
            old: dict[str, Any], source_msg: str | None) -> PlanTaskUpdate:
    update = PlanTaskUpdate(task_id=task.id, actor=actor, kind=kind, value=value, note=note, at=utcnow())
    session.add(update)
    session.add(AuditLog(actor=actor, action=kind, entity="plan_task", entity_key=task.code,
                         old_value=json.dumps(old, ensure_ascii=False),
                         new_value=json.dumps({"value": value, "note": note}, ensure_ascii=False),
                         source_msg=source_msg))
    return update


def _check_percent(value: int) -> None:
    if not 0 <= value <= 100:
        raise TaskError(f"应为 0–100 的整数，收到 {value}")


def _check_open(task: PlanTask) -> None:
    if task.status == DONE:
        raise TaskError("已完成")
    if task.status == CARRIED:
        raise TaskError("已转入整改清单")


def set_progress(session: Session, task: PlanTask, value: int, actor: str, note: str | None = None,
                 source_msg: str | None = None) -> int:
    """Record the owner's progress (0–100) on an open task; returns the previous value."""
    _check_percent(value)
    _check_open(task)
    old = task.progress
    task.progress = value
    _record(session, task, actor, "progress", value, note, {"progress": old}, source_msg)
    return old


def complete(session: Session, task: PlanTask, actor: str, now: datetime, note: str | None = None,
             source_msg: str | None = None) -> None:
    """Mark an open task done (progress 100), keeping the owner's note."""
    _check_open(task)
    old = {"status": task.status, "progress": task.progress}
    task.status, task.progress, task.done_at = DONE, 100, now
    if note:
        task.note = note
    _record(session, task, actor, "done", 100, note, old, source_msg)


def report_achievement(session: Session, task: PlanTask, value: int, actor: str, note: str | None = None,
                       source_msg: str | None = None) -> int | None:
    """Record the 达成度 (0–100) of a task in the 事后 review; returns the previous value."""
    _check_percent(value)
    old = task.achievement
    task.achievement = value
    _record(session, task, actor, "achievement", value, note, {"achievement": old}, source_msg)
    return old


def _rectify_code(session: Session, task: PlanTask, next_cycle: int) -> str:
    """"<编号>-整改", or with the year (and a counter) when that is taken."""
    root = re.sub(rf"-{RECTIFY}\d*(-\d+)?$", "", task.code)[:CODE_MAX]
    taken = set(session.scalars(select(PlanTask.code).where(PlanTask.code.like(f"{root}-{RECTIFY}%"))))
    for candidate in (f"{root}-{RECTIFY}", f"{root}-{RECTIFY}{next_cycle}"):
        if candidate not in taken:
            return candidate
    n = 2
    while f"{root}-{RECTIFY}{next_cycle}-{n}" in taken:
        n += 1
    return f"{root}-{RECTIFY}{next_cycle}-{n}"


def carry_over(session: Session, cycle: int, due: date | None = None, actor: str = "系统") -> list[PlanTask]:
    """Carry the unfinished tasks of a plan year into the next one's 整改清单; returns the new tasks.

    Each open task gets one 整改 task (same owner, supervisor and progress, due `due`,
    30 June of the next year by default) and is closed as carried. Running it again
    creates nothing.
    """
    due = due or date(cycle + 1, 6, 30)
    done_ids = set(session.scalars(select(PlanTask.carried_from_id).where(PlanTask.carried_from_id.is_not(None))))
    created = []
    for task in session.scalars(select(PlanTask).where(
            PlanTask.cycle == cycle, PlanTask.status == OPEN).order_by(PlanTask.id)):
        if task.id in done_ids:
            task.status = CARRIED  # carried before, yet reopened by hand: close it again
            continue
        new = PlanTask(
            code=_rectify_code(session, task, cycle + 1), title=task.title, level=task.level,
            owner_id=task.owner_id, supervisor_id=task.supervisor_id, start=None, due=due,
            cycle=cycle + 1, progress=task.progress, status=OPEN, carried_from_id=task.id,
            note=f"{cycle}年度未完成（进度{task.progress}%"
                 + (f"，达成度{task.achievement}%" if task.achievement is not None else "") + "）",
        )
        session.add(new)
        session.flush()
        task.status = CARRIED
        _record(session, task, actor, "carried", new.id, f"转入整改清单 {new.code}", {"status": OPEN}, None)
        created.append(new)
    session.flush()
    return created


def rectification_list(session: Session, cycle: int) -> list[PlanTask]:
    """The 整改清单 made from a plan year: the tasks carried from it into the next one."""
    carried_ids = select(PlanTask.id).where(PlanTask.cycle == cycle)
    return list(session.scalars(select(PlanTask).where(
        PlanTask.carried_from_id.in_(carried_ids)).order_by(PlanTask.id)))


# ---------------------------------------------------------------- deadline notices

# A notice about a task, kept in its history: value = the outbox row that carried it, note = to whom.
REMINDED, SUPERVISED = "reminded", "supervised"  # the early deadline reminder; a 督办通知


def last_notices(session: Session, task_ids: Iterable[int], kind: str) -> dict[tuple[int, str], date]:
    """(task id, recipient) → the day of the latest notice of `kind` actually queued to them.

    Read from the outbox rows the notices point at: their period key is the day the job
    queued them (ISO), so a notice whose message was never queued counts for nothing.
    """
    ids = sorted(set(task_ids))
    out: dict[tuple[int, str], date] = {}
    for start in range(0, len(ids), 900):
        rows = session.execute(
            select(PlanTaskUpdate.task_id, OutboxMessage.recipient, func.max(OutboxMessage.period_key))
            .join(OutboxMessage, OutboxMessage.id == PlanTaskUpdate.value)
            .where(PlanTaskUpdate.kind == kind, PlanTaskUpdate.task_id.in_(ids[start:start + 900]))
            .group_by(PlanTaskUpdate.task_id, OutboxMessage.recipient))
        out.update(((task_id, to), date.fromisoformat(day)) for task_id, to, day in rows)
    return out


def record_notice(session: Session, task_id: int, kind: str, message: OutboxMessage, note: str,
                  at: datetime) -> None:
    """Keep in a task's history that a notice about it was queued, and in which outbox row."""
    session.add(PlanTaskUpdate(task_id=task_id, actor="系统", kind=kind, value=message.id, note=note, at=at))


def reminder_due(due: date, today: date, last: date | None, days_before: int) -> bool:
    """The early reminder: from `days_before` days before the due day until the day before,
    once per due date (a day missed is made up on the next one, the due day has its own)."""
    return 1 <= (due - today).days <= days_before and (last is None or last < due - timedelta(days=days_before))


def supervision_due(due: date, today: date, last: date | None, every_days: int) -> bool:
    """A 督办通知: at once for an overdue task never supervised since it fell due, then
    `every_days` after the last one queued (not on fixed days: a late start is not skipped)."""
    return today > due and (last is None or last <= due or (today - last).days >= every_days)


# ---------------------------------------------------------------- presentation helpers


@dataclass(frozen=True)
class TaskView:
    """A task as a message lists it: the numbers a template needs, computed once."""

    id: int
    code: str
    title: str
    level: str | None
    progress: int
    achievement: int | None
    status: str
    due: date
    days_left: int  # negative when overdue
    owner: str
    supervisor: str | None

    @property
    def overdue(self) -> bool:
        return self.status == OPEN and self.days_left < 0


def task_view(task: PlanTask, today: date) -> TaskView:
    """The view of a task on `today`."""
    return TaskView(task.id, task.code, task.title, task.level, task.progress, task.achievement, task.status,
                    task.due, (task.due - today).days, task.owner.name,
                    task.supervisor.name if task.supervisor else None)


def fit_sections(render: Callable[..., str], sections: dict[str, list[Any]], limit: int = 2048,
                 **context: object) -> str:
    """Render with as many items as fit in `limit` UTF-8 bytes; `more` counts the items left out.

    `render(sections=…, more=…, **context)` gets each section's items in order. Items are
    dropped from the end, taking turns among the sections, so every section keeps its
    first items; the most items that fit win (an empty section stays, empty).
    """
    turns: list[tuple[str, int]] = []  # round robin: the first item of each section, then the second …
    for i in range(max((len(items) for items in sections.values()), default=0)):
        turns.extend((name, i) for name, items in sections.items() if i < len(items))
    total = len(turns)

    def attempt(k: int) -> str:
        keep = set(turns[:k])
        kept = {name: [x for i, x in enumerate(items) if (name, i) in keep] for name, items in sections.items()}
        return render(sections=kept, more=total - k, **context)

    text = attempt(total)
    if len(text.encode()) <= limit:
        return text
    lo, hi = 0, total - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(attempt(mid).encode()) <= limit:
            lo = mid
        else:
            hi = mid - 1
    text = attempt(lo)
    if len(text.encode()) > limit:  # even the frame is too long: cut it, on a character boundary
        text = text.encode()[:limit].decode(errors="ignore")
    return text


def recipient_of(staff: Staff | None) -> str | None:
    """Where a person's messages go: their 企业微信账号 (None when they have none)."""
    return staff.wecom_userid if staff is not None and staff.wecom_userid else None


def by_person(pairs: Iterable[tuple[Staff, str, Any]]) -> dict[int, tuple[Staff, dict[str, list[Any]]]]:
    """Group (person, section, item) into one bundle per person: person id -> (person, section -> items)."""
    out: dict[int, tuple[Staff, dict[str, list[Any]]]] = {}
    for person, section, item in pairs:
        _p, sections = out.setdefault(person.id, (person, {}))
        sections.setdefault(section, []).append(item)
    return out

