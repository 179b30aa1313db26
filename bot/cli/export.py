"""`export cards (--class CODE | --department NAME) --out FILE.xlsx` and `export report --class CODE
--out FILE.xlsx`: workbooks for printing (PRODUCT.md §5)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask
from sqlalchemy.orm import Session

from bot.cli.common import cli_service, fail, say
from core.render import render


def register(app: Flask) -> None:
    """Attach the `export` group."""
    sensitive_help = render("cli/sensitive_option.txt")

    @app.cli.group("export")
    def export() -> None:
        """Workbooks for printing."""

    @export.command("cards")
    @click.option("--class", "class_code", help="班级编号 (or 班级名称)")
    @click.option("--department", help="系部名称: one sheet per class")
    @click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--with-sensitive", is_flag=True, help=sensitive_help)
    def export_cards(class_code: str | None, department: str | None, out: Path, with_sensitive: bool) -> None:
        """The cards as a workbook: a row per student, every point, subtotals, total, value added."""
        from handlers.workbooks import cards_workbook

        if bool(class_code) == bool(department):
            fail("export_class_or_department", 2)
        service = cli_service()
        with service.sessions() as session:
            classes = _classes(session, class_code, department)
            wb = cards_workbook(session, service.catalogue, classes, service.today(), sensitive=with_sensitive)
            wb.save(out)
        say("export_cards_done", count=len(classes), out=out)

    @export.command("report")
    @click.option("--class", "class_code", required=True, help="班级编号 (or 班级名称)")
    @click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--with-sensitive", is_flag=True, help=sensitive_help)
    def export_report(class_code: str, out: Path, with_sensitive: bool) -> None:
        """A class's 学生学业情况分析报告: summary sheet and card sheet."""
        from handlers.workbooks import report_workbook

        service = cli_service()
        with service.sessions() as session:
            (klass,) = _classes(session, class_code, None)
            report_workbook(session, service.catalogue, klass, service.today(), sensitive=with_sensitive).save(out)
        say("export_report_done", name=klass.name, out=out)


def _classes(session: Session, class_code: str | None, department: str | None) -> list:
    """The classes asked for, or exit 1 with a message naming what was not found."""
    from sqlalchemy import select

    from models.schema import Department, SchoolClass

    if class_code:
        klass = session.scalar(select(SchoolClass).where(SchoolClass.code == class_code)) or session.scalar(
            select(SchoolClass).where(SchoolClass.name == class_code).limit(1))
        if klass is None:
            fail("class_not_found", 1, token=class_code)
        return [klass]
    dept = session.scalar(select(Department).where(Department.name == department))
    if dept is None:
        fail("department_not_found", 1, name=department)
    classes = list(session.scalars(select(SchoolClass).where(SchoolClass.department_id == dept.id)
                                   .order_by(SchoolClass.code)))
    if not classes:
        fail("department_empty", 1, name=department)
    return classes
