"""The 采分 import (`scores import PATH --as 工号`): a sheet of values from another system, checked
whole, written as one recording through the one write path (models/scores.py).

Sheet 采分 holds 学号 or 班级编号, 采分点, 值 and an optional 日期 (and an optional 姓名, checked
against the 学号). Every row is checked exactly as a chat line is — the value by the catalogue's
`parse_value`, the recorder by `may_record`, the period by `place` — and every problem names sheet,
row and column (a `Problem` value, worded by the CLI). One bad row and nothing
is written; a clean file is written as ONE recording batch (source "import", source_msg the file
name) through `record_entries`, with an audit row per entry.

Importing again replaces, so a file imported twice changes nothing:

- rate, score, level and document points: the newest value of a period replaces the
  older one (as in chat);
- count points (频次): the imported value is the period's TOTAL from the other system. It
  replaces the totals imported before for the same student, point and period (those entries
  are revoked, with audit); counts recorded in chat are kept and add to it. A total of 0 is
  accepted and simply leaves no imported count;
- 每次课前 points: each row is one session's observation on its 日期; imported
  observations replace those imported before for the same student, point and day.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.authz import Actor, may_record
from models.cards import CHUNK, chunks
from models.catalogue import Catalogue, LineError, ScorePoint, normalise, parse_value
from models.evaluation import needs_evaluation
from models.io.sheets import cell_text, parse_date
from models.periods import (
    UNIT_OF_PERIOD,
    UNIT_WORDS,
    Calendar,
    PeriodError,
    Placement,
    period_key,
    place,
    unit_bounds,
)
from models.problems import Problem, ProblemError
from models.risk.rules import RuleBook
from models.schema import SchoolClass, ScoreEntry, Student
from models.scores import PlannedEntry, load_calendar, record_entries, revoke

IMPORT_SOURCE = "import"

SCORE_SHEET = "采分"
SHEET_ALIASES = ("采分", "scores", "score")
STUDENT_NO, CLASS_CODE, POINT, VALUE, DAY, NAME = "学号", "班级编号", "采分点", "值", "日期", "姓名"
COLUMNS = (STUDENT_NO, CLASS_CODE, NAME, POINT, VALUE, DAY)
HEADER_ALIASES = {
    STUDENT_NO: ("student_no",),
    CLASS_CODE: ("class_code", "班级"),
    NAME: ("name",),
    POINT: ("point", "采分项"),
    VALUE: ("value", "分值", "分数", "成绩", "得分"),
    DAY: ("date", "记录日期", "采分日期"),
}
HEADER_SCAN_ROWS = 10  # a title row or two above the header is tolerated
ZERO = re.compile(r"^0+(?:\.0+)?$")


def _header_key(text: Any) -> str:  # noqa: ANN401 - any cell value
    """How headers are compared: NFKC, no notes in parentheses or asterisks, lower case."""
    text = re.sub(r"\(.*?\)|\*", "", cell_text(text).lower()).strip()
    return re.sub(r"[\s\-]+", "_", text)


HEADERS = {_header_key(alias): col for col in COLUMNS for alias in (col, *HEADER_ALIASES.get(col, ()))}


class ScoreImportError(ProblemError):
    """The file cannot be imported: its `problems` in sheet order, each naming sheet, row and column
    when in a cell (the CLI words them through templates/errors/problem.txt)."""


def _refused(code: str, /, **fields: object) -> ScoreImportError:
    """The import refused whole, for a problem of the file rather than of a cell."""
    return ScoreImportError(Problem(code, fields))


@dataclass
class ScoreSheet:
    """The 采分 sheet as text: header row number, canonical headers, data rows (row number, cells)."""

    header_row: int = 1
    headers: list[str] = field(default_factory=list)
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def _cell(value: Any, number_format: str | None) -> str:  # noqa: ANN401 - any cell value
    """A cell as text; a number shown as a percentage in Excel (0.95 as 95%) reads as "95%"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and number_format and "%" in number_format:
        return f"{round(value * 100, 6):g}%"
    return cell_text(value)


def _sheet_from(raw_rows: Iterator[tuple[int, list[tuple[Any, str | None]]]]) -> ScoreSheet:
    sheet = ScoreSheet()
    columns: dict[int, str] | None = None
    scanned = 0
    for number, cells in raw_rows:
        texts = [_cell(v, f) for v, f in cells]
        if not any(texts):
            continue
        if columns is None:
            found = {i: HEADERS[_header_key(t)] for i, t in enumerate(texts) if _header_key(t) in HEADERS}
            scanned += 1
            if POINT not in found.values() and scanned < HEADER_SCAN_ROWS:
                continue
            sheet.header_row = number
            columns = {}
            for i, col in sorted(found.items()):
                if col not in columns.values():
                    columns[i] = col
            sheet.headers = list(columns.values())
            continue
        values = {col: (texts[i] if i < len(texts) else "") for i, col in columns.items()}
        if any(values.values()):
            sheet.rows.append((number, values))
    return sheet


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def read_score_sheet(path: Path) -> ScoreSheet:
    """Read sheet 采分 of an .xlsx workbook (or a .csv file holding that one sheet)."""
    if not path.exists():
        raise _refused("import/no_file", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            text = _decode(path.read_bytes())
        except UnicodeDecodeError:
            raise _refused("import/encoding", file=path.name) from None
        try:
            records = list(csv.reader(text.splitlines()))
        except csv.Error as exc:
            raise _refused("import/bad_csv", file=path.name, error=str(exc)) from None
        return _sheet_from((i, [(v, None) for v in r]) for i, r in enumerate(records, start=1))
    if suffix not in (".xlsx", ".xlsm"):
        raise _refused("import/bad_format", file=path.name)
    import openpyxl  # noqa: PLC0415  (load_workbook only; the writer is imported above)

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (zipfile, XML and openpyxl errors alike)
        raise _refused("import/unreadable", file=path.name, error=str(exc)) from exc
    try:
        aliases = {_header_key(a) for a in SHEET_ALIASES}
        sheets = [ws for ws in wb.worksheets if _header_key(ws.title) in aliases]
        if not sheets:
            raise _refused("import/no_sheet", sheet=SCORE_SHEET, found=[ws.title for ws in wb.worksheets])
        if len(sheets) > 1:
            raise _refused("import/two_sheets", sheet=SCORE_SHEET, found=[ws.title for ws in sheets])
        rows = (
            (i, [(c.value, getattr(c, "number_format", None)) for c in r])
            for i, r in enumerate(sheets[0].iter_rows(), start=1)
        )
        return _sheet_from(rows)
    finally:
        wb.close()


@dataclass
class ScoreImportReport:
    """What an import wrote, for the one-paragraph summary."""

    file: str
    rows: int
    batch_id: int | None = None
    written: int = 0
    by_point: dict[str, int] = field(default_factory=dict)
    replaced: int = 0
    zero_totals: int = 0



@dataclass(frozen=True)
class _Subject:
    student_id: int | None
    class_id: int
    name: str
    grade: int | None


class _ImportChecker:
    """Checks every row of a 采分 sheet against the catalogue, the roster, the periods and the actor."""

    def __init__(self, session: Session, catalogue: Catalogue, cal: Calendar, actor: Actor, today: date) -> None:
        self.catalogue, self.cal, self.actor, self.today = catalogue, cal, actor, today
        self.errors: list[tuple[int, int, Problem]] = []
        classes = session.execute(select(SchoolClass.id, SchoolClass.code, SchoolClass.name,
                                         SchoolClass.grade)).all()
        self.grades = {c.id: c.grade for c in classes}
        self.class_names = {c.id: c.name for c in classes}
        self.classes: dict[str, int] = {}
        for c in classes:
            self.classes[c.code] = c.id
        for c in classes:
            self.classes.setdefault(c.name, c.id)
        self.students = {s.student_no: s for s in session.execute(
            select(Student.id, Student.student_no, Student.name, Student.class_id))}
        self._allowed: dict[tuple[str, int], bool] = {}
        self._placed: dict[tuple[str, date | None, int | None], Placement | Problem] = {}

    def error(self, row: int, column: str, code: str, /, **fields: object) -> None:
        """Note a problem of a cell: row, column, its code and fields."""
        order = COLUMNS.index(column) if column in COLUMNS else -1
        self.errors.append((row, order, Problem(code, fields, SCORE_SHEET, row, column)))

    def problems(self) -> list[Problem]:
        """The problems noted, in sheet order (row, then column)."""
        return [p for _row, _order, p in sorted(self.errors, key=lambda e: e[:2])]

    def check(self, sheet: ScoreSheet) -> list[tuple[int, PlannedEntry]]:
        """Planned entries with their row numbers; errors collected in `self.errors`."""
        missing = [c for c in (POINT, VALUE) if c not in sheet.headers]
        if STUDENT_NO not in sheet.headers and CLASS_CODE not in sheet.headers:
            missing.insert(0, f"{STUDENT_NO}或{CLASS_CODE}")
        for col in missing:
            self.error(sheet.header_row, col, "import/missing_column")
        if missing:
            return []
        if not sheet.rows:
            self.error(sheet.header_row + 1, STUDENT_NO, "import/no_rows")
            return []
        planned: list[tuple[int, PlannedEntry]] = []
        seen: dict[tuple[str, str, str], int] = {}
        for number, cells in sheet.rows:
            entry = self._row(number, cells)
            if entry is None:
                continue
            if not entry.point.is_observation:
                who = f"s{entry.student_id}" if entry.student_id else f"c{entry.class_id}"
                key = (who, entry.point.code, entry.period_key)
                if key in seen:
                    self.error(number, POINT, "import/duplicate_row", first=seen[key], subject=entry.subject_name,
                               point=entry.point.short)
                    continue
                seen[key] = number
            planned.append((number, entry))
        return planned

    def _row(self, number: int, cells: dict[str, str]) -> PlannedEntry | None:
        subject = self._subject(number, cells)
        point = self._point(number, cells, subject)
        value = self._value(number, cells, point) if point is not None else None
        day = self._day(number, cells)
        if subject is None or point is None or value is None or day is False:
            return None
        if not self._may_record(point, subject.class_id):
            self.error(number, POINT, "import/not_recorder", actor=self.actor.name,
                       klass=self.class_names[subject.class_id], point=point.short, recorders=point.recorders)
            return None
        placed = self._placement(point, day, subject.grade)
        if isinstance(placed, Problem):
            self.error(number, DAY if day else POINT, placed.code, **placed.fields)
            return None
        return PlannedEntry(point, subject.student_id, None if subject.student_id else subject.class_id,
                            subject.name, value, placed.occurred_on, placed.period_key, placed.semester_key)

    def _subject(self, number: int, cells: dict[str, str]) -> _Subject | None:
        student_no, class_key = cells.get(STUDENT_NO, ""), cells.get(CLASS_CODE, "")
        if student_no and class_key:
            self.error(number, CLASS_CODE, "import/both_subjects")
            return None
        if not student_no and not class_key:
            self.error(number, STUDENT_NO, "import/no_subject")
            return None
        if student_no:
            if re.fullmatch(r"\d+\.0+", student_no):
                student_no = student_no.split(".")[0]
            s = self.students.get(student_no)
            if s is None:
                self.error(number, STUDENT_NO, "import/student_not_found", student_no=student_no)
                return None
            name = cells.get(NAME, "")
            if name and name != s.name:
                self.error(number, NAME, "import/wrong_name", student_no=student_no, name=s.name, given=name)
                return None
            return _Subject(s.id, s.class_id, s.name, self.grades.get(s.class_id))
        class_id = self.classes.get(class_key)
        if class_id is None:
            self.error(number, CLASS_CODE, "import/class_not_found", klass=class_key)
            return None
        return _Subject(None, class_id, self.class_names[class_id], self.grades.get(class_id))

    def _point(self, number: int, cells: dict[str, str], subject: _Subject | None) -> ScorePoint | None:
        name = cells.get(POINT, "")
        if not name:
            self.error(number, POINT, "import/empty")
            return None
        points = self.catalogue.lookup(name)
        if not points:
            self.error(number, POINT, "import/unknown_point", name=name)
            return None
        if subject is None:
            return points.get("个人") or points.get("班级")
        scope = "个人" if subject.student_id else "班级"
        point = points.get(scope)
        if point is None:
            self.error(number, POINT, "import/wrong_scope", name=name, scope=scope)
            return None
        if point.derived is not None:
            source = self.catalogue.by_code[point.derived.of]
            self.error(number, POINT, "import/derived", point=point.short, source=source.short)
            return None
        return point

    def _value(self, number: int, cells: dict[str, str], point: ScorePoint) -> float | None:
        text = normalise(cells.get(VALUE, ""))
        if not text:
            self.error(number, VALUE, "import/empty")
            return None
        if point.kind == "count" and ZERO.match(text):
            return 0.0  # an imported count is the period's total: zero is a total too
        try:
            return parse_value(point, text)
        except LineError as exc:
            self.error(number, VALUE, exc.problem.code, **exc.problem.fields)
            return None

    def _day(self, number: int, cells: dict[str, str]) -> date | None | bool:
        """The row's 日期 (None when empty; False when it is not a date)."""
        text = cells.get(DAY, "")
        if not text:
            return None
        day = parse_date(text)
        if day is None:
            self.error(number, DAY, "import/bad_date", text=text)
            return False
        return day

    def _may_record(self, point: ScorePoint, class_id: int) -> bool:
        key = (point.code, class_id)
        if key not in self._allowed:
            self._allowed[key] = may_record(self.actor, point, class_id)
        return self._allowed[key]

    def _placement(self, point: ScorePoint, day: date | None, grade: int | None) -> Placement | Problem:
        key = (point.period, day, grade)
        if key not in self._placed:
            try:
                self._placed[key] = place_dated(point, day, self.today, self.cal, grade)
            except PeriodError as exc:
                self._placed[key] = exc.problem
        return self._placed[key]


def place_dated(point: ScorePoint, day: date | None, today: date, cal: Calendar,
                grade: int | None = None) -> Placement:
    """Place an imported value: on `day` if given, else today (as chat does).

    A date in the current period is placed on that date; a date in the period just ended only
    within its grace window (as `上周 …` in chat); anything older or in the future is refused.
    """
    if day is None:
        return place(point.period, today, cal, None, grade)
    if day > today:
        raise PeriodError("import/future_date", day=day, today=today)
    at = place(point.period, day, cal, None, grade)
    if at.period_key == period_key(point.period, today, cal):
        return at
    unit = UNIT_OF_PERIOD[point.period]
    start, _end = unit_bounds(unit, today, cal)
    if period_key(point.period, start - timedelta(days=1), cal) != at.period_key:
        raise PeriodError("import/period_over", day=day, unit=UNIT_WORDS[unit])
    place(point.period, today, cal, unit, grade)  # raises when the grace window has passed
    return at


def _replaced_imports(session: Session, planned: list[PlannedEntry]) -> list[ScoreEntry]:
    """Live imported entries that this import's count totals and observations replace."""
    wanted: set[tuple[int | None, int | None, str, str]] = set()
    codes: dict[str, bool] = {}  # point code -> is an observation point (keyed by day, not period)
    students: set[int] = set()
    classes: set[int] = set()
    for p in planned:
        if p.point.accumulates:
            wanted.add((p.student_id, p.class_id, p.point.code, p.period_key))
        elif p.point.is_observation:
            wanted.add((p.student_id, p.class_id, p.point.code, p.occurred_on.isoformat()))
        else:
            continue
        codes[p.point.code] = p.point.is_observation
        if p.student_id:
            students.add(p.student_id)
        else:
            classes.add(p.class_id)
    if not wanted:
        return []
    found: list[ScoreEntry] = []
    base = select(ScoreEntry).where(ScoreEntry.source == IMPORT_SOURCE, ScoreEntry.revoked_at.is_(None),
                                    ScoreEntry.point_code.in_(list(codes)))
    queries = [base.where(ScoreEntry.student_id.in_(chunk)) for chunk in chunks(sorted(students), CHUNK)]
    queries += [base.where(ScoreEntry.class_id.in_(chunk)) for chunk in chunks(sorted(classes), CHUNK)]
    for query in queries:
        for e in session.scalars(query):
            when = e.occurred_on.isoformat() if codes[e.point_code] else e.period_key
            if (e.student_id, e.class_id, e.point_code, when) in wanted:
                found.append(e)
    return found


def import_scores(session: Session, catalogue: Catalogue, path: str | Path, actor: Actor,
                  today: date, rules: RuleBook | None = None) -> ScoreImportReport:
    """Check the whole file, then write it as one recording batch; the caller commits (or rolls back)."""
    path = Path(path)
    if not actor.is_staff:
        raise _refused("import/not_staff", actor=actor.name)
    sheet = read_score_sheet(path)
    checker = _ImportChecker(session, catalogue, load_calendar(session), actor, today)
    planned = checker.check(sheet)
    if checker.errors:
        raise ScoreImportError(checker.problems())
    entries = [p for _n, p in planned]
    report = ScoreImportReport(file=path.name, rows=len(sheet.rows))
    source_msg = path.name[:128]
    replaced = _replaced_imports(session, entries)
    if replaced:
        report.replaced = len(revoke(session, actor.audit_name, actor.staff_id, replaced, source_msg))
    to_write = [p for p in entries if not (p.point.accumulates and p.value == 0)]
    report.zero_totals = len(entries) - len(to_write)
    if to_write:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        recorded = record_entries(
            session, actor.audit_name, actor.staff_id, to_write,
            text=f"import {path.name} rows={len(sheet.rows)} sha256={digest}",  # the batch's record of its source
            source=IMPORT_SOURCE, source_msg=source_msg,
            evaluate=needs_evaluation(rules, catalogue, to_write) if rules else True)
        session.flush()
        report.batch_id, report.written = recorded.batch_id, len(recorded.entry_ids)
        counts: dict[str, int] = {}
        for p in to_write:
            counts[p.point.short] = counts.get(p.point.short, 0) + 1
        report.by_point = counts
    return report
