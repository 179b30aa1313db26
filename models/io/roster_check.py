"""The roster checked before anything is written: every row, reference, account and semester.

All problems are collected (sheet, row, column and a code with its fields; templates/errors/roster_*.txt
word them); only a clean file is written. The warnings of a clean file are values too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.catalogue import ROLES
from models.io.roster_read import (
    CAL,
    CLASS,
    DEPT,
    SHEETS,
    SPECS,
    STAFF,
    STUDENT,
    TEACH,
    parse_grade,
    parse_roles,
    parse_term,
    parse_year,
)
from models.io.sheets import Sheet, SheetSpec, parse_date
from models.problems import Problem
from models.schema import Department, SchoolClass, Semester, Staff, Student

# WeCom userids: letters, digits and _-@. , starting with a letter or digit, at most 64 bytes.
WECOM_USERID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-@.]{0,63}$")
KEY_COLUMNS = {DEPT: ("系部名称",), CLASS: ("班级编号",), STAFF: ("工号",), STUDENT: ("学号",),
               TEACH: ("工号", "班级编号", "课程"), CAL: ("学年", "学期")}


@dataclass(frozen=True)
class Person:
    """A staff member or student a problem names: in this file (`row`) or only in the database (None)."""

    sheet: str  # STAFF or STUDENT
    key: str  # 工号 or 学号
    name: str
    account: str | None = None
    row: int | None = None

    @property
    def is_staff(self) -> bool:
        return self.sheet == STAFF


@dataclass
class Rec:
    """A row that passed its own checks, with parsed values."""

    row: int
    values: dict[str, Any]


class RosterCheck:
    """Everything import_roster needs to know before writing: the file, the database, problems."""

    def __init__(self, session: Session, sheets: dict[str, Sheet]) -> None:
        self.session = session
        self.sheets = {n: s for n, s in sheets.items() if n in SPECS}
        self.found: list[tuple[tuple[int, int, int], Problem]] = []
        self.recs: dict[str, list[Rec]] = {}
        self.broken: set[str] = set()
        # The database as it is.
        self.db_depts = {d.name: d for d in session.scalars(select(Department))}
        self.db_staff = {s.staff_no: s for s in session.scalars(select(Staff))}
        self.db_classes = {c.code: c for c in session.scalars(select(SchoolClass))}
        self.db_students = {s.student_no: s for s in session.scalars(select(Student))}
        self.db_semesters = {(s.year, s.term): s for s in session.scalars(select(Semester))}

    # -- problem bookkeeping

    def error(self, sheet: str, row: int, column: str, code: str, **fields: Any) -> None:  # noqa: ANN401
        cols = SPECS[sheet].columns
        key = (SHEETS.index(sheet), row, cols.index(column) if column in cols else -1)
        self.found.append((key, Problem(code, fields, sheet, row, column)))

    def problems(self) -> list[Problem]:
        """Every problem found, by sheet, row and column."""
        return [p for _k, p in sorted(self.found, key=lambda kp: kp[0])]

    # -- the passes

    def run(self) -> None:
        for name, sheet in self.sheets.items():
            spec = SPECS[name]
            for row, col, code in sheet.errors:
                self.error(name, row, col, code)
            missing = [c for c in spec.required if c not in sheet.headers]
            for col in missing:
                self.error(name, sheet.header_row, col, "sheet_missing_column")
            if missing or sheet.errors:
                self.broken.add(name)
                self.recs[name] = []
                continue
            self.recs[name] = self._rows(spec, sheet)
        self._references()
        self._wecom()
        self._semesters()

    def _rows(self, spec: SheetSpec, sheet: Sheet) -> list[Rec]:
        """Per-row checks: required values, lengths, formats, duplicate keys."""
        out: list[Rec] = []
        seen: dict[Any, int] = {}
        for row in sheet:
            ok = True
            values: dict[str, Any] = {}
            for col in sheet.headers:
                text = row.get(col, "")
                if not text:
                    if col in spec.required:
                        self.error(spec.name, row.row, col, "sheet_empty_cell")
                        ok = False
                    values[col] = None
                    continue
                limit = spec.max_len.get(col)
                if limit and len(text) > limit:
                    self.error(spec.name, row.row, col, "sheet_too_long", value=text, limit=limit)
                    ok = False
                    values[col] = None
                    continue
                parsed, problem = self._parse(col, text)
                if problem:
                    self.error(spec.name, row.row, col, problem[0], **problem[1])
                    ok = False
                values[col] = parsed
            key = self._key(spec.name, values)
            if key is not None:
                if key in seen:
                    self.error(spec.name, row.row, KEY_COLUMNS[spec.name][-1], "roster_duplicate_row",
                               first_row=seen[key], columns=KEY_COLUMNS[spec.name])
                    continue
                seen[key] = row.row
            # Rows with a problem keep their key (no follow-up "unknown reference" errors)
            # but are not checked further.
            out.append(Rec(row.row, values if ok else {**values, "_bad": True}))
        return out

    @staticmethod
    def _parse(col: str, text: str) -> tuple[Any, tuple[str, dict[str, Any]] | None]:  # noqa: PLR0911
        """The value of a cell, and the problem with it (code, fields) if any."""
        if col == "角色":
            roles, unknown = parse_roles(text)
            if unknown:
                return None, ("roster_unknown_role", {"unknown": unknown, "roles": ROLES})
            return ",".join(roles), None
        if col == "企业微信账号":
            if not WECOM_USERID.fullmatch(text) or len(text.encode()) > 64:
                return None, ("roster_bad_account", {"value": text})
            return text, None
        if col == "年级":
            grade = parse_grade(text)
            return grade, None if grade is not None else ("sheet_bad_year", {"value": text, "example": "2024"})
        if col == "学年":
            year = parse_year(text)
            return year, None if year else ("roster_bad_school_year", {"value": text})
        if col == "学期":
            term = parse_term(text)
            return term, None if term else ("roster_bad_term", {"value": text})
        if col in ("开始日期", "结束日期"):
            d = parse_date(text)
            return d, None if d else ("sheet_bad_date", {"value": text, "example": "2025-09-01"})
        return text, None

    def _key(self, sheet: str, values: dict[str, Any]) -> Any:  # noqa: ANN401
        parts = tuple(values.get(c) for c in KEY_COLUMNS[sheet])
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
                    self.error(sheet, rec.row, col, "roster_unknown_reference", what=what[target], value=value)
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
                others = [Person(o_sheet, o_key, o_name, row=o_row)
                          for (o_sheet, o_key), (o_name, o_row, _u) in claims.items() if (o_sheet, o_key) != who]
                self.error(who[0], row, "企业微信账号", "roster_account_taken", account=userid, others=others)

    def _semesters(self) -> None:
        """Each semester ends on or after its start, and no two semesters overlap."""
        if CAL not in self.sheets or CAL in self.broken:
            return
        terms: list[tuple[date, date, str, int, int | None]] = []  # start, end, year, term, row
        in_file = set()
        for rec in self.recs[CAL]:
            v = rec.values
            if rec.values.get("_bad") or None in (v["学年"], v["学期"], v["开始日期"], v["结束日期"]):
                continue
            in_file.add((v["学年"], v["学期"]))
            if v["结束日期"] < v["开始日期"]:
                self.error(CAL, rec.row, "结束日期", "roster_ends_before_start", start=v["开始日期"], end=v["结束日期"])
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
                    self.error(CAL, this[4], "开始日期", "roster_overlap", start=this[0], end=this[1],
                               other_year=other[2], other_term=other[3], other_start=other[0],
                               other_end=other[1], other_row=other[4])


def id_collisions(session: Session, check: RosterCheck) -> list[Problem]:
    """Warnings for 工号 and 学号 that WeCom cannot tell apart from someone else (PRODUCT.md §5): an id
    that is another person's 企业微信账号, or that names a staff member and a student at once. Such an
    id never identifies anyone on WeChat. Only pairs with a person in the file; WeCom ignores case."""
    rows = {(sheet, rec.values[col]): rec.row for sheet, col in ((STAFF, "工号"), (STUDENT, "学号"))
            for rec in check.recs.get(sheet, ())}
    people = [Person(STAFF, no, name, account, rows.get((STAFF, no)))
              for no, name, account in session.execute(select(Staff.staff_no, Staff.name, Staff.wecom_userid))]
    people += [Person(STUDENT, no, name, account, rows.get((STUDENT, no))) for no, name, account in
               session.execute(select(Student.student_no, Student.name, Student.wecom_userid))]
    by_account: dict[str, list[Person]] = {}
    by_id: dict[str, list[Person]] = {}
    for p in people:
        if p.account:
            by_account.setdefault(p.account.lower(), []).append(p)
        by_id.setdefault(p.key.lower(), []).append(p)
    found: list[tuple[tuple, Problem]] = []
    for p in people:
        for other in by_account.get(p.key.lower(), ()):
            if other != p and (p.row is not None or other.row is not None):
                found.append((_order(p, other, 1), Problem("roster_warn_id_is_account", {"person": p, "other": other})))
        if p.sheet == STAFF:
            for other in by_id.get(p.key.lower(), ()):
                if other.sheet == STUDENT and (p.row is not None or other.row is not None):
                    found.append((_order(p, other, 0), Problem("roster_warn_same_id", {"person": p, "other": other})))
    return [problem for _k, problem in sorted(found, key=lambda f: f[0])]


def _order(p: Person, other: Person, kind: int) -> tuple:
    """Sort key of a warning: the first of its people in the file, by sheet and row; then as its
    wording sorts (its person, the same-id warning before the account one, the other person)."""
    first = min((SHEETS.index(x.sheet), x.row) for x in (p, other) if x.row is not None)
    return (*first, p.name, p.is_staff, p.key, kind, other.name, other.is_staff, other.key)
