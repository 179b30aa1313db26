"""`binding codes --class CODE [--parents] --out FILE.xlsx`: a class's one-time codes for the
Official Account, as a printable sheet (PRODUCT.md §4.1, §5)."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import click
from flask import Flask
from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, Side
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.cli.common import cli_service, fail, say
from core.render import render
from models.binding import IssuedCode, issue_codes
from models.directory import console_user
from models.risk.clock import local
from models.schema import SchoolClass, Student

HEADERS = ("学号", "姓名", "验证码", "有效期至")
WIDTHS = (16, 12, 14, 20)
THIN = Side(style="thin", color="999999")
BORDER = Border(left=THIN, right=THIN, top=THIN, bottom=THIN)
CLI_ACTOR = "命令行"  # who issued codes from the command line, in audit rows: 命令行(<os user>)


def register(app: Flask) -> None:
    """Attach the `binding` group."""

    @app.cli.group("binding")
    def binding() -> None:
        """Binding followers of the Official Account to students."""

    @binding.command("codes")
    @click.option("--class", "class_code", required=True, help="班级编号 (or 班级名称)")
    @click.option("--parents", is_flag=True, help="codes for parents (default: for the students themselves)")
    @click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
    def binding_codes(class_code: str, parents: bool, out: Path) -> None:
        """Issue a fresh code for every student of the class (older unused ones are voided) and
        write them as a printable sheet: 学号, 姓名, 验证码, 有效期至."""
        service = cli_service()
        kind = "parent" if parents else "student"
        tz = ZoneInfo(service.settings.timezone)
        with service.sessions() as session:
            klass = _find_class(session, class_code)
            if klass is None:
                fail("class_not_found", 1, token=class_code)
            ids = list(session.scalars(select(Student.id).where(Student.class_id == klass.id)))
            issued = issue_codes(session, ids, kind, secret_key=service.settings.secret_key,
                                 days=service.settings.bind_code_days, now=service.now(),
                                 issued_by=f"{CLI_ACTOR}({console_user()})")
            try:
                codes_workbook(klass, kind, issued, tz).save(out)
            except OSError:
                session.rollback()  # nothing issued that nobody could read
                fail("binding_out_unwritable", 1, out=out)
            session.commit()
        expires = f"{local(issued[0].expires_at, tz):%Y-%m-%d %H:%M}" if issued else None
        say("binding_codes_done", name=klass.name, count=len(issued), parents=parents, expires=expires, out=out)


def _find_class(session: Session, token: str) -> SchoolClass | None:
    return session.scalar(select(SchoolClass).where(SchoolClass.code == token)) or session.scalar(
        select(SchoolClass).where(SchoolClass.name == token).order_by(SchoolClass.code).limit(1))


def codes_workbook(klass: SchoolClass, kind: str, issued: list[IssuedCode], tz: ZoneInfo) -> Workbook:
    """One sheet: a title, how to bind, then a row per student (every cell text: a code may start with 0)."""
    wb = Workbook()
    ws = wb.active
    ws.title = klass.code[:31]
    ws.append([render("workbook/binding_title.txt", name=klass.name, code=klass.code, kind=kind)])
    ws.append([render("workbook/binding_note.txt", kind=kind)])
    ws.append(list(HEADERS))
    for c in issued:
        ws.append([c.student_no, c.name, c.code, f"{local(c.expires_at, tz):%Y-%m-%d %H:%M}"])
    ws.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(HEADERS))
    ws.merge_cells(start_row=2, start_column=1, end_row=2, end_column=len(HEADERS))
    ws["A1"].font = Font(bold=True, size=14)
    ws["A2"].alignment = Alignment(wrap_text=True, vertical="top")
    ws.row_dimensions[2].height = 48
    for i, width in enumerate(WIDTHS, start=1):
        ws.column_dimensions[chr(ord("A") + i - 1)].width = width
    for row in ws.iter_rows(min_row=3, max_row=ws.max_row):
        for cell in row:
            cell.border = BORDER
            cell.number_format = "@"
            if cell.row == 3:
                cell.font = Font(bold=True)
    ws.print_title_rows = "3:3"
    ws.page_setup.fitToWidth = 1
    return wb
