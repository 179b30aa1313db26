"""The workbooks for printing: the card workbook and the per-class 学生学业情况分析报告.

The card workbook has one sheet per class, a row per student with every individual point's value
grouped by domain, each domain's subtotal, the total and the value added — computed from the same
entries and the same functions as `student_card` (models/io/class_report.py), so the workbook's
numbers are the chat card's. The 学生学业情况分析报告 (seed plan 五(五)2(4)) adds a summary sheet per
class. Titles, notes and headings are worded in templates/workbook/; column headers and labels are data.
Used by `导出` (handlers/export.py) and `export cards|report` (bot/cli/export.py).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from datetime import date
from statistics import fmean
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.render import render
from models.cards import class_card
from models.catalogue import DOMAINS, Catalogue, ScorePoint
from models.io.class_report import BANDS, FALLING, LOWEST, ClassCards, class_cards, missing_points, shown_points
from models.periods import Calendar
from models.schema import Department, SchoolClass, Staff
from models.scores import load_calendar

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
    ws["A1"] = render("workbook/card_title.txt", klass=klass)
    ws["A1"].font = Font(size=14, bold=True)
    ws["A2"] = render("workbook/card_subtitle.txt", department=dept.name if dept else "", head=head,
                      term=data.term.label, today=data.today, size=len(data.students),
                      compare=_compare_word(catalogue))
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
    note = render("workbook/card_note.txt", sensitive=sensitive)
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
    ws.oddFooter.center.text = render("workbook/footer.txt")


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
    added_header = render("workbook/added_header.txt", label="增值", compare=compare)

    ws["A1"] = render("workbook/report_title.txt", klass=klass)
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

    row = _title_row(ws, row, render("workbook/report_heading.txt", part=1))
    domain_rows = []
    for domain in DOMAINS:
        subtotals = [c.subtotal(domain) for c in cards if c.subtotal(domain) is not None]
        added = [c.domain_added(domain) for c in cards if c.domain_added(domain) is not None]
        domain_rows.append((domain, _mean(subtotals), len(subtotals), _mean(added)))
    domain_rows.append(("总分", _mean([c.total for c in with_total]), len(with_total),
                        _mean([c.value_added for c in cards if c.value_added is not None])))
    mean_added = render("workbook/added_header.txt", label="平均增值", compare=compare)
    row = _table(ws, row, ("领域", "平均分", "计入人数", mean_added), domain_rows,
                 (None, "0.0", "0", ADDED_FORMAT))

    row = _title_row(ws, row, render("workbook/report_heading.txt", part=2))
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
    row = _title_row(ws, row, render("workbook/report_heading.txt", part=3, lowest=LOWEST))
    row = _table(ws, row, ("学号", "姓名", "总分", added_header),
                 [(*people[sid], card.total, card.value_added) for card, sid in ranked[:LOWEST]],
                 (None, None, "0.0", ADDED_FORMAT))
    falling = sorted(((data.card_of(sid), sid) for sid in people
                      if (data.card_of(sid).value_added or 0) < 0),
                     key=lambda cs: (cs[0].value_added, people[cs[1]][0]))
    row = _title_row(ws, row, render("workbook/report_heading.txt", part=4, falling=len(falling), listed=FALLING))
    row = _table(ws, row, ("学号", "姓名", "总分", added_header),
                 [(*people[sid], card.total, card.value_added) for card, sid in falling[:FALLING]],
                 (None, None, "0.0", ADDED_FORMAT))

    row = _title_row(ws, row, render("workbook/report_heading.txt", part=5))
    gaps = missing_points(session, catalogue, cal, klass, today)
    row = _table(ws, row, ("采分点", "采分时点", "缺少记录", "班级人数"),
                 [(m.point, m.when, "班级未录入" if m.is_class else m.missing, m.size) for m in gaps])
    if not gaps:
        ws.cell(row - 1, 1, render("workbook/report_no_gaps.txt"))

    row = _title_row(ws, row, render("workbook/report_heading.txt", part=6))
    card = class_card(session, catalogue, cal, klass.id, today)
    class_rows = [(d.domain, d.subtotal, card.domain_added(d.domain)) for d in card.domains]
    class_rows.append(("总分", card.total, card.value_added))
    row = _table(ws, row, ("领域", "小计", added_header), class_rows, (None, "0.0", ADDED_FORMAT))

    ws.cell(row, 1, render("workbook/report_basis.txt"))
    for letter, width in zip("ABCDEF", (16, 22, 12, 16, 12, 12), strict=True):
        ws.column_dimensions[letter].width = width
    ws.page_setup.orientation = "portrait"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.oddFooter.center.text = render("workbook/footer.txt")
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

