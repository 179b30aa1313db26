"""Roster import: the 系部 / 班级 / 教职工 / 学生 / 任课 / 校历 workbook (PRODUCT.md §5).

All-or-nothing: every sheet and row is checked first and every error collected; only a
clean file is written. Rows are upserted by their key; sheets absent from the file, and
optional columns absent from a sheet, are left untouched. Nothing is ever deleted.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.catalogue import ROLES
from models.schema import Department, SchoolClass, Semester, Staff, Student, TeachingAssignment

DEPT, CLASS, STAFF, STUDENT, TEACH, CAL = "系部", "班级", "教职工", "学生", "任课", "校历"
# Order of PRODUCT.md (template, error listing) and order of writing (references first).
SHEETS = (DEPT, CLASS, STAFF, STUDENT, TEACH, CAL)
WRITE_ORDER = (DEPT, STAFF, CLASS, STUDENT, TEACH, CAL)

NEW, UPDATED, SAME = "新增", "更新", "未变"

ROLE_ALIASES = {"任课老师": "任课教师", "体育教师": "体育老师"}
ROLE_SEPARATORS = re.compile(r"[、,，;；\s]+")
# WeCom userids: letters, digits and _-@. , starting with a letter or digit, at most 64 bytes.
WECOM_USERID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-@.]{0,63}$")
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))

HEADER_SCAN_ROWS = 10  # a title row or two above the header is tolerated


@dataclass(frozen=True)
class SheetSpec:
    """One sheet of the workbook: its columns (canonical first) and what is mandatory."""

    name: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    aliases: dict[str, tuple[str, ...]]
    sheet_aliases: tuple[str, ...]
    # Longest text the database column takes, per column.
    max_len: dict[str, int] = field(default_factory=dict)


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


class RosterError(Exception):
    """The roster file is wrong; `errors` names sheet, row and column of each problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass
class ImportReport:
    """Counts of created / updated / unchanged rows per sheet (only sheets in the file)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # imported all the same: the roster should be fixed

    def summary(self) -> str:
        """One short Chinese line per sheet, e.g. "学生：新增 3，更新 1，未变 10", then each warning."""
        return "\n".join([*(f"{sheet}：新增 {c[NEW]}，更新 {c[UPDATED]}，未变 {c[SAME]}"
                             for sheet, c in self.counts.items()), *self.warnings])


class Row(dict[str, str]):
    """One data row: canonical header -> cell text, with `row`, its Excel row number."""

    def __init__(self, row: int, values: dict[str, str]) -> None:
        super().__init__(values)
        self.row = row


class Sheet(list[Row]):
    """The rows of one sheet, with the canonical headers found and header-level problems."""

    def __init__(self, name: str, header_row: int = 1) -> None:
        super().__init__()
        self.name = name
        self.header_row = header_row
        self.headers: list[str] = []
        self.errors: list[tuple[int, str, str]] = []  # (row, column, message)


# ---------------------------------------------------------------- reading


def cell_text(value: Any) -> str:  # noqa: ANN401
    """A cell as clean text: NFKC, trimmed, whole numbers without ".0", dates as ISO."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time() else value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = unicodedata.normalize("NFKC", str(value)).translate(INVISIBLE)
    return text.strip()


def _header_key(text: str) -> str:
    """How headers and sheet names are compared: NFKC, no notes or asterisks, lower case."""
    text = cell_text(text).lower()
    text = re.sub(r"\(.*?\)|\*", "", text).strip()
    return re.sub(r"[\s\-]+", "_", text)


def _header_map(spec: SheetSpec) -> dict[str, str]:
    out: dict[str, str] = {}
    for col in spec.columns:
        out[_header_key(col)] = col
        for alias in spec.aliases.get(col, ()):
            out[_header_key(alias)] = col
    return out


HEADER_MAPS = {name: _header_map(spec) for name, spec in SPECS.items()}
SHEET_NAMES = {_header_key(alias): name for name, spec in SPECS.items()
               for alias in (name, *spec.sheet_aliases)}


def sheet_name_of(raw: str) -> str | None:
    """The canonical sheet a sheet (or .csv file) name stands for; None for other sheets."""
    return SHEET_NAMES.get(_header_key(raw))


def _build_sheet(name: str, rows: Iterable[tuple[int, list[Any]]]) -> Sheet | None:
    """Turn raw rows (row number, cell values) into a Sheet; None for a sheet with nothing in it.

    The header is the first non-empty row naming a known column (a title row or two above it
    is tolerated); failing that, the first non-empty row.
    """
    mapping = HEADER_MAPS[name]
    sheet: Sheet | None = None
    columns: dict[int, str] | None = None
    scanned = 0
    for number, cells in rows:
        texts = [cell_text(c) for c in cells]
        if not any(texts):
            continue
        if sheet is None:
            sheet = Sheet(name, header_row=number)
        if columns is None:
            found = {i: mapping[_header_key(t)] for i, t in enumerate(texts) if _header_key(t) in mapping}
            scanned += 1
            if not found:
                if scanned >= HEADER_SCAN_ROWS:
                    columns = {}  # no header at all: every required column is reported missing
                continue
            sheet.header_row = number
            columns = {}
            for i, col in sorted(found.items()):
                if col in columns.values():
                    sheet.errors.append((number, col, "列重复"))
                else:
                    columns[i] = col
            sheet.headers = list(columns.values())
            continue
        values = {col: (texts[i] if i < len(texts) else "") for i, col in columns.items()}
        for col, text in values.items():
            if col in CODE_COLUMNS and re.fullmatch(r"\d+\.0+", text):
                values[col] = text.split(".")[0]
        if any(values.values()):
            sheet.append(Row(number, values))
    return sheet


def _read_xlsx(path: Path) -> dict[str, Sheet]:
    import openpyxl  # noqa: PLC0415  (only needed for workbooks)

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (zipfile, XML and openpyxl errors alike)
        raise RosterError([f"无法读取工作簿 {path.name}：{exc}"]) from exc
    try:
        out: dict[str, Sheet] = {}
        errors: list[str] = []
        for ws in wb.worksheets:
            name = sheet_name_of(ws.title)
            if name is None:
                continue
            rows = ((i, list(r)) for i, r in enumerate(ws.iter_rows(values_only=True), start=1))
            sheet = _build_sheet(name, rows)
            if sheet is None:
                continue  # an empty sheet is as good as an absent one
            if name in out:
                errors.append(f"{name}：工作表重复（“{ws.title}”）")
                continue
            out[name] = sheet
        if errors:
            raise RosterError(errors)
        return out
    finally:
        wb.close()


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def _csv_rows(path: Path) -> Iterator[tuple[int, list[Any]]]:
    try:
        text = _decode(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise RosterError([f"{path.name}：无法识别文件编码（应为 UTF-8 或 GB18030）"]) from exc
    for i, record in enumerate(csv.reader(text.splitlines()), start=1):
        yield i, list(record)


def _read_csv_files(files: list[Path]) -> dict[str, Sheet]:
    out: dict[str, Sheet] = {}
    errors: list[str] = []
    for f in sorted(files):
        name = sheet_name_of(f.stem)
        if name is None:
            continue
        try:
            sheet = _build_sheet(name, _csv_rows(f))
        except RosterError as exc:
            errors.extend(exc.errors)
            continue
        except csv.Error as exc:
            errors.append(f"{f.name}：CSV 格式错误：{exc}")
            continue
        if sheet is None:
            continue
        if name in out:
            errors.append(f"{name}：工作表重复（“{f.name}”）")
            continue
        out[name] = sheet
    if errors:
        raise RosterError(errors)
    return out


def read_roster(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Read an .xlsx workbook or a folder of .csv files into sheet -> rows (each a `Row`)."""
    return dict(_read(Path(path)))


def _read(p: Path) -> dict[str, Sheet]:
    """Sheets by canonical name; other sheets, and sheets with nothing in them, are left out."""
    if p.is_dir():
        return _read_csv_files([f for f in p.iterdir() if f.suffix.lower() == ".csv" and f.is_file()])
    if not p.exists():
        raise RosterError([f"找不到文件：{p}"])
    suffix = p.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return _read_xlsx(p)
    if suffix == ".csv":
        return _read_csv_files([p])
    raise RosterError([f"不支持的文件格式：{p.name}（请使用 .xlsx 工作簿或 .csv 文件夹）"])


# ---------------------------------------------------------------- parsing of values


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


def parse_date(text: str) -> date | None:
    """2025-09-01, 2025/9/1, 2025.9.1, 2025年9月1日, 20250901 or an Excel serial day; else None."""
    text = cell_text(text)
    if not text:
        return None
    text = re.split(r"[\sT]", text, maxsplit=1)[0]
    try:
        if m := re.fullmatch(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?", text):
            return date(int(m[1]), int(m[2]), int(m[3]))
        if re.fullmatch(r"\d{8}", text):
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        if re.fullmatch(r"\d{5}", text) and 20000 <= int(text) <= 80000:
            return date(1899, 12, 30) + timedelta(days=int(text))
    except ValueError:
        return None
    return None


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


# ---------------------------------------------------------------- checking


def _q(text: str) -> str:
    return f"“{text}”"


@dataclass
class _Rec:
    """A row that passed its own checks, with parsed values."""

    row: int
    values: dict[str, Any]


class _Checker:
    """Everything import_roster needs to know before writing: the file, the database, errors."""

    def __init__(self, session: Session, sheets: dict[str, Sheet]) -> None:
        self.session = session
        self.sheets = {n: s for n, s in sheets.items() if n in SPECS}
        self.errors: list[tuple[int, int, int, str]] = []
        self.recs: dict[str, list[_Rec]] = {}
        self.broken: set[str] = set()
        # The database as it is.
        self.db_depts = {d.name: d for d in session.scalars(select(Department))}
        self.db_staff = {s.staff_no: s for s in session.scalars(select(Staff))}
        self.db_classes = {c.code: c for c in session.scalars(select(SchoolClass))}
        self.db_students = {s.student_no: s for s in session.scalars(select(Student))}
        self.db_semesters = {(s.year, s.term): s for s in session.scalars(select(Semester))}

    # -- error bookkeeping

    def error(self, sheet: str, row: int, column: str, message: str) -> None:
        cols = SPECS[sheet].columns
        self.errors.append((SHEETS.index(sheet), row, cols.index(column) if column in cols else -1,
                            f"{sheet} 第{row}行 {column}：{message}"))

    def messages(self) -> list[str]:
        return [m for *_k, m in sorted(self.errors)]

    # -- the passes

    def run(self) -> None:
        for name, sheet in self.sheets.items():
            spec = SPECS[name]
            for row, col, msg in sheet.errors:
                self.error(name, row, col, msg)
            missing = [c for c in spec.required if c not in sheet.headers]
            for col in missing:
                self.error(name, sheet.header_row, col, "缺少必填列")
            if missing or sheet.errors:
                self.broken.add(name)
                self.recs[name] = []
                continue
            self.recs[name] = self._rows(spec, sheet)
        self._references()
        self._wecom()
        self._semesters()

    def _rows(self, spec: SheetSpec, sheet: Sheet) -> list[_Rec]:
        """Per-row checks: required values, lengths, formats, duplicate keys."""
        out: list[_Rec] = []
        seen: dict[Any, int] = {}
        for row in sheet:
            ok = True
            values: dict[str, Any] = {}
            for col in sheet.headers:
                text = row.get(col, "")
                if not text:
                    if col in spec.required:
                        self.error(spec.name, row.row, col, "不能为空")
                        ok = False
                    values[col] = None
                    continue
                limit = spec.max_len.get(col)
                if limit and len(text) > limit:
                    self.error(spec.name, row.row, col, f"{_q(text)}超过{limit}个字符")
                    ok = False
                    values[col] = None
                    continue
                parsed, problem = self._parse(spec.name, col, text)
                if problem:
                    self.error(spec.name, row.row, col, problem)
                    ok = False
                values[col] = parsed
            key = self._key(spec.name, values)
            if key is not None:
                if key in seen:
                    self.error(spec.name, row.row, self._key_column(spec.name),
                               f"与第{seen[key]}行重复（{'、'.join(self._key_columns(spec.name))}相同）")
                    continue
                seen[key] = row.row
            # Rows with a problem keep their key (no follow-up "unknown reference" errors)
            # but are not checked further.
            out.append(_Rec(row.row, values if ok else {**values, "_bad": True}))
        return out

    @staticmethod
    def _parse(sheet: str, col: str, text: str) -> tuple[Any, str | None]:
        if col == "角色":
            roles, unknown = parse_roles(text)
            if unknown:
                return None, f"未知角色{'、'.join(map(_q, unknown))}（可用：{'、'.join(ROLES)}）"
            return ",".join(roles), None
        if col == "企业微信账号":
            if not WECOM_USERID.fullmatch(text) or len(text.encode()) > 64:
                return None, f"{_q(text)}不是有效的企业微信账号（字母、数字和 _-@. 组成，不超过64字节）"
            return text, None
        if col == "年级":
            grade = parse_grade(text)
            return grade, None if grade is not None else f"{_q(text)}应为四位年份，如2024"
        if col == "学年":
            year = parse_year(text)
            return year, None if year else f"{_q(text)}应写作“2025-2026”"
        if col == "学期":
            term = parse_term(text)
            return term, None if term else f"{_q(text)}应为1或2（第一学期/第二学期）"
        if col in ("开始日期", "结束日期"):
            d = parse_date(text)
            return d, None if d else f"{_q(text)}不是有效日期（如2025-09-01）"
        return text, None

    @staticmethod
    def _key_columns(sheet: str) -> tuple[str, ...]:
        return {DEPT: ("系部名称",), CLASS: ("班级编号",), STAFF: ("工号",), STUDENT: ("学号",),
                TEACH: ("工号", "班级编号", "课程"), CAL: ("学年", "学期")}[sheet]

    def _key_column(self, sheet: str) -> str:
        return self._key_columns(sheet)[-1]

    def _key(self, sheet: str, values: dict[str, Any]) -> Any:  # noqa: ANN401
        parts = tuple(values.get(c) for c in self._key_columns(sheet))
        if any(p is None for p in parts):
            return None
        return parts if len(parts) > 1 else parts[0]

    def keys(self, sheet: str) -> set[Any]:
        """Keys a sheet of the file defines (rows with errors included)."""
        out = set()
        for rec in self.recs.get(sheet, []):
            key = self._key(sheet, rec.values)
            if key is not None:
                out.add(key)
        return out

    def _references(self) -> None:
        """系部 / 工号 / 班级编号 references must exist in the file or in the database."""
        known = {
            DEPT: self.keys(DEPT) | set(self.db_depts),
            STAFF: self.keys(STAFF) | set(self.db_staff),
            CLASS: self.keys(CLASS) | set(self.db_classes),
        }
        what = {DEPT: "系部", STAFF: "工号", CLASS: "班级"}
        refs = {
            DEPT: {"系部主任工号": STAFF},
            CLASS: {"系部": DEPT, "班主任工号": STAFF, "辅导员工号": STAFF},
            STAFF: {"系部": DEPT},
            STUDENT: {"班级编号": CLASS},
            TEACH: {"工号": STAFF, "班级编号": CLASS},
        }
        for sheet, columns in refs.items():
            for rec in self.recs.get(sheet, []):
                for col, target in columns.items():
                    value = rec.values.get(col)
                    if value is None or target in self.broken or value in known[target]:
                        continue
                    self.error(sheet, rec.row, col, f"{what[target]}{_q(value)}不存在")
                    rec.values["_bad"] = True

    def _wecom(self) -> None:
        """One 企业微信账号, one person: staff and students share it, file and database alike.

        WeCom ignores case when it checks userids for uniqueness, so this does too.
        """
        # account (lower case) -> person (sheet, key) -> (name, file row or None, account as written)
        owners: dict[str, dict[tuple[str, str], tuple[str, int | None, str]]] = {}

        def claim(userid: str, who: tuple[str, str], name: str, row: int | None) -> None:
            owners.setdefault(userid.lower(), {}).setdefault(who, (name, row, userid))

        in_file: dict[str, set[str]] = {STAFF: set(), STUDENT: set()}
        for sheet, key_col in ((STAFF, "工号"), (STUDENT, "学号")):
            if sheet not in self.sheets or sheet in self.broken or \
                    "企业微信账号" not in self.sheets[sheet].headers:
                continue
            for rec in self.recs[sheet]:
                key = rec.values[key_col]
                in_file[sheet].add(key)
                if rec.values.get("企业微信账号"):
                    claim(rec.values["企业微信账号"], (sheet, key), rec.values.get("姓名") or "", rec.row)
        for s in self.db_staff.values():
            if s.wecom_userid and s.staff_no not in in_file[STAFF]:
                claim(s.wecom_userid, (STAFF, s.staff_no), s.name, None)
        for st in self.db_students.values():
            if st.wecom_userid and st.student_no not in in_file[STUDENT]:
                claim(st.wecom_userid, (STUDENT, st.student_no), st.name, None)
        for claims in owners.values():
            if len(claims) < 2:
                continue
            for who, (_name, row, userid) in claims.items():
                if row is None:
                    continue
                others = []
                for (o_sheet, o_key), (o_name, o_row, _u) in claims.items():
                    if (o_sheet, o_key) == who:
                        continue
                    where = f"{o_sheet} 第{o_row}行" if o_row is not None else "数据库中已有"
                    label = "工号" if o_sheet == STAFF else "学号"
                    others.append(f"{o_sheet}{o_name}（{label}{o_key}，{where}）")
                self.error(who[0], row, "企业微信账号", f"{_q(userid)}已被{'、'.join(others)}使用")

    def _semesters(self) -> None:
        """Each semester ends on or after its start, and no two semesters overlap."""
        if CAL not in self.sheets or CAL in self.broken:
            return
        terms: list[tuple[date, date, str, str, int | None]] = []  # start, end, year, term, row
        in_file = set()
        for rec in self.recs[CAL]:
            v = rec.values
            if rec.values.get("_bad") or None in (v["学年"], v["学期"], v["开始日期"], v["结束日期"]):
                continue
            in_file.add((v["学年"], v["学期"]))
            if v["结束日期"] < v["开始日期"]:
                self.error(CAL, rec.row, "结束日期", f"结束日期{v['结束日期']}早于开始日期{v['开始日期']}")
                continue
            terms.append((v["开始日期"], v["结束日期"], v["学年"], v["学期"], rec.row))
        for (year, term), s in self.db_semesters.items():
            if (year, term) not in in_file:
                terms.append((s.start, s.end, year, term, None))
        terms.sort(key=lambda t: (t[0], t[1]))
        for i, a in enumerate(terms):
            for b in terms[i + 1:]:
                if b[0] > a[1]:
                    break
                for this, other in ((a, b), (b, a)):
                    if this[4] is None:
                        continue
                    where = f"第{other[4]}行" if other[4] is not None else "数据库中已有"
                    label = f"{other[2]}学年第{'一' if other[3] == 1 else '二'}学期"
                    self.error(CAL, this[4], "开始日期",
                               f"{this[0]}至{this[1]}与{label}（{other[0]}至{other[1]}，{where}）重叠")


# ---------------------------------------------------------------- writing


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

    def __init__(self, checker: _Checker) -> None:
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
    checker = _Checker(session, _read(Path(path)))
    checker.run()
    if checker.errors:
        raise RosterError(checker.messages())
    report = _Writer(checker).run()
    report.warnings = id_collisions(session, checker)
    return report


@dataclass(frozen=True)
class _Person:
    sheet: str  # STAFF or STUDENT
    key: str  # 工号 or 学号
    name: str
    account: str | None
    row: int | None  # in this file; None: only in the database

    def __str__(self) -> str:
        label = "工号" if self.sheet == STAFF else "学号"
        where = f"{self.sheet} 第{self.row}行" if self.row is not None else "数据库中已有"
        return f"{self.name}（{label}{self.key}，{where}）"


def id_collisions(session: Session, checker: _Checker) -> list[str]:
    """Warnings for 工号 and 学号 that WeCom cannot tell apart from someone else (PRODUCT.md §5): an id
    that is another person's 企业微信账号, or that names a staff member and a student at once. Such an
    id never identifies anyone on WeChat. Only pairs with a person in the file; WeCom ignores case."""
    rows = {(sheet, rec.values[col]): rec.row for sheet, col in ((STAFF, "工号"), (STUDENT, "学号"))
            for rec in checker.recs.get(sheet, ())}
    people = [_Person(STAFF, no, name, account, rows.get((STAFF, no)))
              for no, name, account in session.execute(select(Staff.staff_no, Staff.name, Staff.wecom_userid))]
    people += [_Person(STUDENT, no, name, account, rows.get((STUDENT, no))) for no, name, account in
               session.execute(select(Student.student_no, Student.name, Student.wecom_userid))]
    by_account: dict[str, list[_Person]] = {}
    by_id: dict[str, list[_Person]] = {}
    for p in people:
        if p.account:
            by_account.setdefault(p.account.lower(), []).append(p)
        by_id.setdefault(p.key.lower(), []).append(p)
    found: list[tuple[int, int, str]] = []
    for p in people:
        label = "工号" if p.sheet == STAFF else "学号"
        for other in by_account.get(p.key.lower(), ()):
            if other != p and (p.row is not None or other.row is not None):
                found.append((*_order(p, other), f"提醒：{p}的{label}{_q(p.key)}是{other}的企业微信账号，"
                                                  f"企业微信中不会按此{label}识别{p.name}。"))
        if p.sheet == STAFF:
            for other in by_id.get(p.key.lower(), ()):
                if other.sheet == STUDENT and (p.row is not None or other.row is not None):
                    found.append((*_order(p, other), f"提醒：{p}与{other}的编号{_q(p.key)}相同，"
                                                      "企业微信中不会按此编号识别他们。"))
    return [m for *_k, m in sorted(found)]


def _order(a: _Person, b: _Person) -> tuple[int, int]:
    """Sort key of a warning: the first of its people in the file, by sheet and row."""
    return min((SHEETS.index(p.sheet), p.row) for p in (a, b) if p.row is not None)


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
