"""Excel in and out: the 采分 import, the card workbook and the per-class 学生学业情况分析报告.

Import (`scores import PATH --as 工号`): sheet 采分 with 学号 or 班级编号, 采分点, 值 and an
optional 日期 (and an optional 姓名, checked against the 学号). Every row is checked exactly
as a chat line is — the value by the chat parser's `parse_value`, the recorder by
`may_record`, the period by `place` — and every error names sheet, row and column. One bad
row and nothing is written; a clean file is written as ONE recording batch (source
"import", source_msg the file name) through `record_entries`, with an audit row per entry.

Importing again replaces, so a file imported twice changes nothing:

- rate, score, level and document points: the newest value of a period replaces the
  older one (as in chat);
- count points (频次): the imported value is the period's TOTAL from the other system. It
  replaces the totals imported before for the same student, point and period (those entries
  are revoked, with audit); counts recorded in chat are kept and add to it. A total of 0 is
  accepted and simply leaves no imported count;
- 每次课前 points: each row is one session's observation on its 日期; imported
  observations replace those imported before for the same student, point and day.

Export: one sheet per class, a row per student with every individual point's value grouped
by domain, each domain's subtotal, the total and the value added — computed from the same
entries and the same functions as `student_card`, so the workbook's numbers are the chat
card's. The 学生学业情况分析报告 (seed plan 五(五)2(4)) adds a summary sheet per class.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from statistics import fmean
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.authz import Actor, may_record
from models.card import Card
from models.cards import CHUNK, chunks, class_card, student_cards
from models.catalogue import DOMAINS, Catalogue, ScorePoint, normalise
from models.evaluation import needs_evaluation
from models.expected import missing_entries
from models.io.roster import cell_text, parse_date
from models.periods import (
    UNIT_OF_PERIOD,
    UNIT_WORDS,
    Calendar,
    PeriodError,
    Placement,
    Term,
    month_bounds,
    period_key,
    period_label,
    place,
    unit_bounds,
)
from models.schema import (
    Department,
    RecordingBatch,
    SchoolClass,
    ScoreEntry,
    Staff,
    Student,
)
from models.scores import (
    PlannedEntry,
    load_calendar,
    record_entries,
    revoke,
)

IMPORT_SOURCE = "import"

# ───────────────────────────── the 采分 import ─────────────────────────────

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


class ScoreImportError(Exception):
    """The file cannot be imported; `errors` name sheet, row and column of each problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


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
        raise ScoreImportError([f"找不到文件：{path}"])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            text = _decode(path.read_bytes())
        except UnicodeDecodeError:
            raise ScoreImportError([f"{path.name}：无法识别文件编码（应为 UTF-8 或 GB18030）"]) from None
        try:
            records = list(csv.reader(text.splitlines()))
        except csv.Error as exc:
            raise ScoreImportError([f"{path.name}：CSV 格式错误：{exc}"]) from None
        return _sheet_from((i, [(v, None) for v in r]) for i, r in enumerate(records, start=1))
    if suffix not in (".xlsx", ".xlsm"):
        raise ScoreImportError([f"不支持的文件格式：{path.name}（请使用 .xlsx 工作簿）"])
    import openpyxl  # noqa: PLC0415  (load_workbook only; the writer is imported above)

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (zipfile, XML and openpyxl errors alike)
        raise ScoreImportError([f"无法读取工作簿 {path.name}：{exc}"]) from exc
    try:
        aliases = {_header_key(a) for a in SHEET_ALIASES}
        sheets = [ws for ws in wb.worksheets if _header_key(ws.title) in aliases]
        if not sheets:
            found = "、".join(ws.title for ws in wb.worksheets)
            raise ScoreImportError([f"工作簿中没有名为“{SCORE_SHEET}”的工作表（现有：{found}）"])
        if len(sheets) > 1:
            raise ScoreImportError([f"{SCORE_SHEET}：工作表重复（{'、'.join(ws.title for ws in sheets)}）"])
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

    def summary(self) -> str:
        """A short Chinese summary of the import."""
        if self.batch_id is None:
            head = f"{self.file}：{self.rows} 行已检查，没有需要写入的值"
        else:
            points = "、".join(f"{name} {n}" for name, n in self.by_point.items())
            head = f"已从 {self.file} 导入 {self.written} 条（批次 #{self.batch_id}）：{points}"
        lines = [head + "。"]
        if self.replaced:
            lines.append(f"替换了之前导入的 {self.replaced} 条次数或课堂记录（次数类采分点的值是该时段的总数）。")
        if self.zero_totals:
            lines.append(f"{self.zero_totals} 行次数为 0，未写入记录。")
        lines.append("同一采分点同一时段再次导入会替换原值。")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Subject:
    student_id: int | None
    class_id: int
    name: str
    grade: int | None


class _ImportChecker:
    """Checks every row of a 采分 sheet against the catalogue, the roster, the periods and the actor."""

    def __init__(self, session: Session, catalogue: Catalogue, cal: Calendar, actor: Actor, today: date) -> None:
        from handlers.recording import LineError, parse_value  # noqa: PLC0415  (import cycle via handlers)

        self.catalogue, self.cal, self.actor, self.today = catalogue, cal, actor, today
        self.parse_value, self.line_error = parse_value, LineError
        self.errors: list[tuple[int, int, str]] = []
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
        self._placed: dict[tuple[str, date | None, int | None], Placement | str] = {}

    def error(self, row: int, column: str, message: str) -> None:
        order = COLUMNS.index(column) if column in COLUMNS else -1
        self.errors.append((row, order, f"{SCORE_SHEET} 第{row}行 {column}：{message}"))

    def messages(self) -> list[str]:
        return [m for *_k, m in sorted(self.errors)]

    def check(self, sheet: ScoreSheet) -> list[tuple[int, PlannedEntry]]:
        """Planned entries with their row numbers; errors collected in `self.errors`."""
        missing = [c for c in (POINT, VALUE) if c not in sheet.headers]
        if STUDENT_NO not in sheet.headers and CLASS_CODE not in sheet.headers:
            missing.insert(0, f"{STUDENT_NO}或{CLASS_CODE}")
        for col in missing:
            self.error(sheet.header_row, col, "缺少必填列")
        if missing:
            return []
        if not sheet.rows:
            self.error(sheet.header_row + 1, STUDENT_NO, "没有数据行")
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
                    self.error(number, POINT, f"与第{seen[key]}行重复（{entry.subject_name}的{entry.point.short}"
                                              f"在同一时段只能有一个值）")
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
            self.error(number, POINT, f"{self.actor.name}不能为{self.class_names[subject.class_id]}录入"
                                      f"{point.short}（采分主体：{'、'.join(point.recorders)}）")
            return None
        placed = self._placement(point, day, subject.grade)
        if isinstance(placed, str):
            self.error(number, DAY if day else POINT, placed)
            return None
        return PlannedEntry(point, subject.student_id, None if subject.student_id else subject.class_id,
                            subject.name, value, placed.occurred_on, placed.period_key, placed.semester_key)

    def _subject(self, number: int, cells: dict[str, str]) -> _Subject | None:
        student_no, class_key = cells.get(STUDENT_NO, ""), cells.get(CLASS_CODE, "")
        if student_no and class_key:
            self.error(number, CLASS_CODE, "学号和班级编号只填一个：学生采分点填学号，班级采分点填班级编号")
            return None
        if not student_no and not class_key:
            self.error(number, STUDENT_NO, "学号或班级编号必须填一个")
            return None
        if student_no:
            if re.fullmatch(r"\d+\.0+", student_no):
                student_no = student_no.split(".")[0]
            s = self.students.get(student_no)
            if s is None:
                self.error(number, STUDENT_NO, f"找不到学号“{student_no}”")
                return None
            name = cells.get(NAME, "")
            if name and name != s.name:
                self.error(number, NAME, f"学号{student_no}是{s.name}，不是{name}")
                return None
            return _Subject(s.id, s.class_id, s.name, self.grades.get(s.class_id))
        class_id = self.classes.get(class_key)
        if class_id is None:
            self.error(number, CLASS_CODE, f"找不到班级“{class_key}”")
            return None
        return _Subject(None, class_id, self.class_names[class_id], self.grades.get(class_id))

    def _point(self, number: int, cells: dict[str, str], subject: _Subject | None) -> ScorePoint | None:
        name = cells.get(POINT, "")
        if not name:
            self.error(number, POINT, "不能为空")
            return None
        points = self.catalogue.lookup(name)
        if not points:
            self.error(number, POINT, f"未知采分点“{name}”")
            return None
        if subject is None:
            return points.get("个人") or points.get("班级")
        scope = "个人" if subject.student_id else "班级"
        point = points.get(scope)
        if point is None:
            hint = "班级采分点，请填班级编号" if scope == "个人" else "学生个人采分点，请填学号"
            self.error(number, POINT, f"“{name}”是{hint}")
            return None
        if point.derived is not None:
            source = self.catalogue.by_code[point.derived.of]
            self.error(number, POINT, f"班级的{point.short}由学生的{source.short}自动计算，不需要导入")
            return None
        return point

    def _value(self, number: int, cells: dict[str, str], point: ScorePoint) -> float | None:
        text = normalise(cells.get(VALUE, ""))
        if not text:
            self.error(number, VALUE, "不能为空")
            return None
        if point.kind == "count" and ZERO.match(text):
            return 0.0  # an imported count is the period's total: zero is a total too
        try:
            return self.parse_value(point, text)
        except self.line_error as exc:
            self.error(number, VALUE, str(exc))
            return None

    def _day(self, number: int, cells: dict[str, str]) -> date | None | bool:
        """The row's 日期 (None when empty; False when it is not a date)."""
        text = cells.get(DAY, "")
        if not text:
            return None
        day = parse_date(text)
        if day is None:
            self.error(number, DAY, f"“{text}”不是有效日期（如2026-01-10）")
            return False
        return day

    def _may_record(self, point: ScorePoint, class_id: int) -> bool:
        key = (point.code, class_id)
        if key not in self._allowed:
            self._allowed[key] = may_record(self.actor, point, class_id)
        return self._allowed[key]

    def _placement(self, point: ScorePoint, day: date | None, grade: int | None) -> Placement | str:
        key = (point.period, day, grade)
        if key not in self._placed:
            try:
                self._placed[key] = place_dated(point, day, self.today, self.cal, grade)
            except PeriodError as exc:
                self._placed[key] = str(exc)
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
        raise PeriodError(f"日期{day.isoformat()}晚于今天（{today.isoformat()}）")
    at = place(point.period, day, cal, None, grade)
    if at.period_key == period_key(point.period, today, cal):
        return at
    unit = UNIT_OF_PERIOD[point.period]
    start, _end = unit_bounds(unit, today, cal)
    if period_key(point.period, start - timedelta(days=1), cal) != at.period_key:
        word = UNIT_WORDS[unit]
        raise PeriodError(f"{day.isoformat()}所在的{word}已结束：只能导入本{word}的值，或在补录期内导入上{word}的值")
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
                  today: date) -> ScoreImportReport:
    """Check the whole file, then write it as one recording batch; the caller commits (or rolls back)."""
    path = Path(path)
    if not actor.is_staff:
        raise ScoreImportError([f"{actor.name}不是教职工，不能导入采分点"])
    sheet = read_score_sheet(path)
    checker = _ImportChecker(session, catalogue, load_calendar(session), actor, today)
    planned = checker.check(sheet)
    if checker.errors:
        raise ScoreImportError(checker.messages())
    entries = [p for _n, p in planned]
    report = ScoreImportReport(file=path.name, rows=len(sheet.rows))
    source_msg = path.name[:128]
    replaced = _replaced_imports(session, entries)
    if replaced:
        revoke(session, actor.audit_name, actor.staff_id, replaced, source_msg)
        session.flush()
        _close_emptied_batches(session, {e.batch_id for e in replaced})
        report.replaced = len(replaced)
    to_write = [p for p in entries if not (p.point.accumulates and p.value == 0)]
    report.zero_totals = len(entries) - len(to_write)
    if to_write:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        recorded = record_entries(
            session, actor.audit_name, actor.staff_id, to_write,
            text=f"导入 {path.name}：{len(sheet.rows)} 行（sha256 {digest}）",
            source=IMPORT_SOURCE, source_msg=source_msg, evaluate=needs_evaluation(catalogue, to_write))
        session.flush()
        report.batch_id, report.written = recorded.batch_id, len(recorded.entry_ids)
        counts: dict[str, int] = {}
        for p in to_write:
            counts[p.point.short] = counts.get(p.point.short, 0) + 1
        report.by_point = counts
    return report


def _close_emptied_batches(session: Session, batch_ids: set[int]) -> None:
    """A batch whose every entry is now revoked counts as undone (so `撤销` skips it)."""
    live = set(session.scalars(select(ScoreEntry.batch_id).where(
        ScoreEntry.batch_id.in_(batch_ids), ScoreEntry.revoked_at.is_(None)).distinct()))
    for batch_id in batch_ids - live:
        batch = session.get(RecordingBatch, batch_id)
        if batch is not None and batch.revoked_at is None:
            batch.revoked_at = session.scalar(select(ScoreEntry.revoked_at).where(
                ScoreEntry.batch_id == batch_id).order_by(ScoreEntry.id.desc()).limit(1))


# ───────────────────────────── the card workbook ─────────────────────────────

THIN = Side(style="thin", color="999999")
BORDER = Border(left=THIN, right=THIN, top=THIN, bottom=THIN)
HEAD_FILL = PatternFill("solid", fgColor="D9E1F2")
SUBTOTAL_FILL = PatternFill("solid", fgColor="FFF2CC")
TOTAL_FILL = PatternFill("solid", fgColor="E2EFDA")
CENTER = Alignment(horizontal="center", vertical="center", wrap_text=True)
HEADER_ROWS = 4  # title, details, domain groups, column names
NUMBER_FORMATS = {"rate": '0.0"%"', "score": "0.0", "count": '0"次"'}
ADDED_FORMAT = "+0.0;-0.0;0.0"
SHEET_TITLE_BAD = re.compile(r"[\[\]:*?/\\]")


@dataclass
class ClassCards:
    """One class: its students (id, 学号, 姓名) and their cards, as of `today`."""

    klass: SchoolClass
    term: Term
    today: date
    students: list[tuple[int, str, str]]
    cards: dict[int, Card]

    def card_of(self, student_id: int) -> Card:
        return self.cards[student_id]


def class_cards(session: Session, catalogue: Catalogue, cal: Calendar, klass: SchoolClass,
                today: date) -> ClassCards:
    """Every student's card of a class, in 学号 order."""
    students = [(r.id, r.student_no, r.name) for r in session.execute(
        select(Student.id, Student.student_no, Student.name)
        .where(Student.class_id == klass.id).order_by(Student.student_no))]
    cards = student_cards(session, catalogue, cal, [s[0] for s in students], today)
    return ClassCards(klass, cal.term_for(today), today, students, cards)


def shown_points(catalogue: Catalogue, sensitive: bool) -> dict[str, list[ScorePoint]]:
    """Individual points by domain, in catalogue order; sensitive points only when allowed."""
    out: dict[str, list[ScorePoint]] = {d: [] for d in DOMAINS}
    for p in catalogue.individual():
        if sensitive or not p.sensitive:
            out[p.domain].append(p)
    return out


def _cell_value(point: ScorePoint, value: float) -> float | str:
    if point.kind in ("level", "document"):
        return point.display_value(value)
    return round(value, 1)


def _compare_word(catalogue: Catalogue) -> str:
    return "较上月" if catalogue.formula.compare == "month" else "较上周"


def _sheet_title(wb: Workbook, text: str) -> str:
    base = SHEET_TITLE_BAD.sub("_", text)[:31] or "班级"
    title, n = base, 2
    while title in wb.sheetnames:
        suffix = f"_{n}"
        title, n = base[:31 - len(suffix)] + suffix, n + 1
    return title


def _staff_name(session: Session, staff_id: int | None) -> str:
    return (session.scalar(select(Staff.name).where(Staff.id == staff_id)) if staff_id else None) or "—"


def write_card_sheet(wb: Workbook, session: Session, catalogue: Catalogue, data: ClassCards, *,
                     sensitive: bool, title: str | None = None) -> Worksheet:
    """One class's card sheet: a row per student, every point, subtotals, total and value added."""
    klass = data.klass
    ws = wb.create_sheet(_sheet_title(wb, title or klass.code))
    groups = shown_points(catalogue, sensitive)
    columns: list[tuple[str, ScorePoint | str | None]] = [("学号", None), ("姓名", None)]
    for domain in DOMAINS:
        columns += [(p.short, p) for p in groups[domain]]
        columns.append(("小计", domain))
    columns += [("总分", "total"), ("增值", "added")]
    width = len(columns)
    last = get_column_letter(width)

    dept = session.get(Department, klass.department_id)
    head = _staff_name(session, klass.head_teacher_id)
    ws["A1"] = f"{klass.name}（{klass.code}）学生发展储值卡"
    ws["A1"].font = Font(size=14, bold=True)
    ws["A2"] = (f"{dept.name if dept else ''} · 班主任 {head} · {data.term.label} · "
                f"统计至 {data.today.year}年{data.today.month}月{data.today.day}日 · 共 {len(data.students)} 人 · "
                f"增值为总分{_compare_word(catalogue)}的变化")
    ws.merge_cells(f"A1:{last}1")
    ws.merge_cells(f"A2:{last}2")
    ws["A1"].alignment = Alignment(horizontal="center")
    ws["A2"].alignment = Alignment(horizontal="center")

    # Row 3: domain groups; row 4: column names. 学号, 姓名, 总分 and 增值 span both rows.
    col = 1
    for name, _kind in columns[:2]:
        ws.cell(3, col, name)
        ws.merge_cells(start_row=3, start_column=col, end_row=4, end_column=col)
        col += 1
    for domain in DOMAINS:
        span = len(groups[domain]) + 1
        ws.cell(3, col, domain)
        if span > 1:
            ws.merge_cells(start_row=3, start_column=col, end_row=3, end_column=col + span - 1)
        for p in groups[domain]:
            ws.cell(4, col, p.short)
            col += 1
        ws.cell(4, col, f"{domain[:2]}小计")
        col += 1
    for name in ("总分", "增值"):
        ws.cell(3, col, name)
        ws.merge_cells(start_row=3, start_column=col, end_row=4, end_column=col)
        col += 1
    for row in (3, 4):
        for c in range(1, width + 1):
            cell = ws.cell(row, c)
            cell.font, cell.alignment, cell.border, cell.fill = Font(bold=True), CENTER, BORDER, HEAD_FILL

    row = HEADER_ROWS + 1
    for student_id, student_no, name in data.students:
        card = data.card_of(student_id)
        lines = {line.point.code: line for d in card.domains for line in d.lines}
        for c, (_label, kind) in enumerate(columns, start=1):
            cell = ws.cell(row, c)
            if c == 1:
                cell.value, cell.number_format = student_no, "@"
            elif c == 2:
                cell.value = name
            elif isinstance(kind, ScorePoint):
                line = lines.get(kind.code)
                if line is not None:
                    cell.value = _cell_value(kind, line.value.value)
                    cell.number_format = NUMBER_FORMATS.get(kind.kind, "General")
            elif kind == "total":
                cell.value, cell.number_format = card.total, "0.0"
                cell.fill, cell.font = TOTAL_FILL, Font(bold=True)
            elif kind == "added":
                cell.value, cell.number_format = card.value_added, ADDED_FORMAT
            else:
                cell.value, cell.number_format, cell.fill = card.subtotal(kind), "0.0", SUBTOTAL_FILL
            cell.border = BORDER
            if c > 2:
                cell.alignment = Alignment(horizontal="center")
        row += 1
    _average_row(ws, data, columns, row)
    note = (f"说明：各采分点为本学期至统计日的值；小计为该领域已记录采分点折算分（0–100）的加权平均，"
            f"总分为各领域小计的加权平均（权重见采分点目录）；未记录的采分点不计入。"
            f"{'' if sensitive else '敏感采分点不在表中列出，但照常计入小计。'}")
    ws.cell(row + 2, 1, note).alignment = Alignment(wrap_text=False)

    ws.column_dimensions["A"].width = 13
    ws.column_dimensions["B"].width = 9
    for c in range(3, width + 1):
        ws.column_dimensions[get_column_letter(c)].width = 7.5
    ws.row_dimensions[4].height = 60
    _print_setup(ws, f"A1:{last}{row}", f"{klass.name} · {data.term.label}")
    ws.freeze_panes = ws.cell(HEADER_ROWS + 1, 3)
    return ws


def _average_row(ws: Worksheet, data: ClassCards, columns: list, row: int) -> None:
    """班级平均 of the subtotals, total and value added (students with a value)."""
    ws.cell(row, 2, "班级平均").font = Font(bold=True)
    for c, (_label, kind) in enumerate(columns, start=1):
        cell = ws.cell(row, c)
        cell.border = BORDER
        if kind is None or isinstance(kind, ScorePoint):
            continue
        values = []
        for sid, _no, _name in data.students:
            card = data.card_of(sid)
            v = card.total if kind == "total" else card.value_added if kind == "added" else card.subtotal(kind)
            if v is not None:
                values.append(v)
        if values:
            cell.value = round(fmean(values), 1)
            cell.number_format = ADDED_FORMAT if kind == "added" else "0.0"
            cell.alignment, cell.font = Alignment(horizontal="center"), Font(bold=True)


def _print_setup(ws: Worksheet, area: str, header: str) -> None:
    """A4 landscape, fitted to the page width, header rows repeated, page numbers in the footer."""
    ws.page_setup.orientation = "landscape"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.print_title_rows = f"1:{HEADER_ROWS}"
    ws.print_area = area
    ws.print_options.horizontalCentered = True
    ws.page_margins.left = ws.page_margins.right = 0.4
    ws.page_margins.top = ws.page_margins.bottom = 0.6
    ws.oddHeader.center.text = header
    ws.oddFooter.center.text = "第 &P 页，共 &N 页"


def cards_workbook(session: Session, catalogue: Catalogue, classes: Sequence[SchoolClass], today: date, *,
                   sensitive: bool = False) -> Workbook:
    """The card workbook: one sheet per class."""
    cal = load_calendar(session)
    wb = Workbook()
    wb.remove(wb.active)
    for klass in classes:
        write_card_sheet(wb, session, catalogue, class_cards(session, catalogue, cal, klass, today),
                         sensitive=sensitive)
    return wb


# ───────────────────────────── 学生学业情况分析报告 ─────────────────────────────

BANDS = (("90 分及以上", 90.0, None), ("80–89.9 分", 80.0, 90.0), ("70–79.9 分", 70.0, 80.0),
         ("60–69.9 分", 60.0, 70.0), ("60 分以下", None, 60.0))
LOWEST = 5  # students listed with the lowest totals
FALLING = 10  # students listed with falling value added
MISSING_POINTS = 8  # points listed with the most missing records
# When the points of each 采分时点 count as due, as the reminders' defaults do.
YEAR_START_WEEKS = 4
SEMESTER_END_DAYS = 17


def due_periods(cal: Calendar, today: date) -> list[tuple[str, date]]:
    """采分时点 whose period has come due by `today`, each with the day its period is checked on.

    Weekly points are checked on the last complete week, monthly points on the last complete
    month; 学年初 points after the first weeks of the year, 第一学期中 after mid-term, 学期末,
    学年末 and 毕业前 in the last weeks of the semester.
    """
    term = cal.term_for(today)
    out: list[tuple[str, date]] = []
    sunday = today if today.weekday() == 6 else today - timedelta(days=today.weekday() + 1)
    if term.start <= sunday:
        out += [("每次课前", sunday), ("周末", sunday)]
    month_end = today if month_bounds(today)[1] == today else month_bounds(today)[0] - timedelta(days=1)
    if term.start <= month_end:
        out.append(("月末", month_end))
    first = term if term.term == 1 else cal.previous_term(term)
    if term.term == 2 or today >= first.start + timedelta(days=7 * YEAR_START_WEEKS):
        out.append(("学年初", today))
    if term.term == 1 and today >= term.start + timedelta(days=(term.end - term.start).days // 2):
        out.append(("第一学期中", today))
    if today >= term.end - timedelta(days=SEMESTER_END_DAYS):
        out.append(("学期末", today))
        if term.term == 2:
            out += [("学年末", today), ("毕业前", today)]
    return out


@dataclass(frozen=True)
class MissingPoint:
    """A point of the class with students (or the class itself) lacking a record in a due period."""

    point: str
    when: str
    missing: int
    size: int
    is_class: bool


def missing_points(session: Session, catalogue: Catalogue, cal: Calendar, klass: SchoolClass,
                   today: date) -> list[MissingPoint]:
    """The class's points with the most missing records in the periods due by `today` (as the reminders count)."""
    found: dict[str, MissingPoint] = {}
    for period, day in due_periods(cal, today):
        label = period_label(period, period_key(period, day, cal))
        for items in missing_entries(session, catalogue, cal, period, day).values():
            for m in items:
                if m.class_code != klass.code or m.point_code in found:
                    continue
                found[m.point_code] = MissingPoint(m.point_short, f"{period}（{label}）",
                                                   m.class_size if m.is_class else m.missing_students,
                                                   m.class_size, m.is_class)
    return sorted(found.values(), key=lambda m: (-m.missing, m.point))[:MISSING_POINTS]


def _title_row(ws: Worksheet, row: int, text: str) -> int:
    ws.cell(row, 1, text).font = Font(bold=True, size=12)
    return row + 1


def _table(ws: Worksheet, row: int, header: Sequence[str], rows: Sequence[Sequence[Any]],
           formats: Sequence[str | None] = ()) -> int:
    for c, name in enumerate(header, start=1):
        cell = ws.cell(row, c, name)
        cell.font, cell.fill, cell.border, cell.alignment = Font(bold=True), HEAD_FILL, BORDER, CENTER
    for values in rows:
        row += 1
        for c, value in enumerate(values, start=1):
            cell = ws.cell(row, c, value)
            cell.border = BORDER
            if c - 1 < len(formats) and formats[c - 1] and isinstance(value, (int, float)):
                cell.number_format = formats[c - 1]
    return row + 2


def _mean(values: list[float]) -> float | None:
    return round(fmean(values), 1) if values else None


def write_report_sheet(wb: Workbook, session: Session, catalogue: Catalogue, cal: Calendar,
                       data: ClassCards) -> Worksheet:
    """The summary sheet of the 学生学业情况分析报告 for one class."""
    klass, today = data.klass, data.today
    ws = wb.create_sheet(_sheet_title(wb, "分析报告"), 0)
    cards = [data.card_of(sid) for sid, _no, _name in data.students]
    dept = session.get(Department, klass.department_id)
    compare = _compare_word(catalogue)

    ws["A1"] = f"{klass.name}（{klass.code}）学生学业情况分析报告"
    ws["A1"].font = Font(size=14, bold=True)
    ws.merge_cells("A1:F1")
    with_total = [c for c in cards if c.total is not None]
    info = [
        ("系部", dept.name if dept else "—"), ("班主任", _staff_name(session, klass.head_teacher_id)),
        ("辅导员", _staff_name(session, klass.counsellor_id)), ("学期", data.term.label),
        ("统计日期", f"{today.year}年{today.month}月{today.day}日"),
        ("学生人数", len(cards)), ("有记录人数", len(with_total)),
    ]
    row = 3
    for label, value in info:
        ws.cell(row, 1, label).font = Font(bold=True)
        ws.cell(row, 2, value)
        row += 1
    row += 1

    row = _title_row(ws, row, "一、各发展领域平均分")
    domain_rows = []
    for domain in DOMAINS:
        subtotals = [c.subtotal(domain) for c in cards if c.subtotal(domain) is not None]
        added = [c.domain_added(domain) for c in cards if c.domain_added(domain) is not None]
        domain_rows.append((domain, _mean(subtotals), len(subtotals), _mean(added)))
    domain_rows.append(("总分", _mean([c.total for c in with_total]), len(with_total),
                        _mean([c.value_added for c in cards if c.value_added is not None])))
    row = _table(ws, row, ("领域", "平均分", "计入人数", f"平均增值（{compare}）"), domain_rows,
                 (None, "0.0", "0", ADDED_FORMAT))

    row = _title_row(ws, row, "二、总分分布")
    bands = []
    for label, lo, hi in BANDS:
        n = sum(1 for c in with_total if (lo is None or c.total >= lo) and (hi is None or c.total < hi))
        bands.append((label, n, n / len(cards) if cards else 0.0))
    bands.append(("暂无记录", len(cards) - len(with_total),
                  (len(cards) - len(with_total)) / len(cards) if cards else 0.0))
    row = _table(ws, row, ("总分段", "人数", "占比"), bands, (None, "0", "0.0%"))

    people = {sid: (no, name) for sid, no, name in data.students}
    ranked = sorted(((data.card_of(sid), sid) for sid in people if data.card_of(sid).total is not None),
                    key=lambda cs: (cs[0].total, people[cs[1]][0]))
    row = _title_row(ws, row, f"三、需要关注的学生（总分最低的 {LOWEST} 名）")
    row = _table(ws, row, ("学号", "姓名", "总分", f"增值（{compare}）"),
                 [(*people[sid], card.total, card.value_added) for card, sid in ranked[:LOWEST]],
                 (None, None, "0.0", ADDED_FORMAT))
    falling = sorted(((data.card_of(sid), sid) for sid in people
                      if (data.card_of(sid).value_added or 0) < 0),
                     key=lambda cs: (cs[0].value_added, people[cs[1]][0]))
    row = _title_row(ws, row, f"四、增值下降的学生（共 {len(falling)} 名，列出前 {FALLING} 名）")
    row = _table(ws, row, ("学号", "姓名", "总分", f"增值（{compare}）"),
                 [(*people[sid], card.total, card.value_added) for card, sid in falling[:FALLING]],
                 (None, None, "0.0", ADDED_FORMAT))

    row = _title_row(ws, row, "五、缺失记录最多的采分点")
    gaps = missing_points(session, catalogue, cal, klass, today)
    row = _table(ws, row, ("采分点", "采分时点", "缺少记录", "班级人数"),
                 [(m.point, m.when, "班级未录入" if m.is_class else m.missing, m.size) for m in gaps])
    if not gaps:
        ws.cell(row - 1, 1, "（已到期的采分点都已录入）")

    row = _title_row(ws, row, "六、班级储值卡")
    card = class_card(session, catalogue, cal, klass.id, today)
    class_rows = [(d.domain, d.subtotal, card.domain_added(d.domain)) for d in card.domains]
    class_rows.append(("总分", card.total, card.value_added))
    row = _table(ws, row, ("领域", "小计", f"增值（{compare}）"), class_rows, (None, "0.0", ADDED_FORMAT))

    ws.cell(row, 1, "依据：学院内部质量保证体系建设方案 五（五）2（4）——根据学生学业情况及素质发展水平，"
                    "编制《学生学业情况分析报告》。")
    for letter, width in zip("ABCDEF", (16, 22, 12, 16, 12, 12), strict=True):
        ws.column_dimensions[letter].width = width
    ws.page_setup.orientation = "portrait"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.oddFooter.center.text = "第 &P 页，共 &N 页"
    return ws


def report_workbook(session: Session, catalogue: Catalogue, klass: SchoolClass, today: date, *,
                    sensitive: bool = False) -> Workbook:
    """The per-class 学生学业情况分析报告: a summary sheet, then the card sheet."""
    cal = load_calendar(session)
    data = class_cards(session, catalogue, cal, klass, today)
    wb = Workbook()
    wb.remove(wb.active)
    write_card_sheet(wb, session, catalogue, data, sensitive=sensitive, title="储值卡")
    write_report_sheet(wb, session, catalogue, cal, data)
    wb.active = 0
    return wb


def workbook_bytes(wb: Workbook) -> bytes:
    """The workbook as .xlsx bytes (for a download)."""
    buffer = io.BytesIO()
    wb.save(buffer)
    return buffer.getvalue()
