"""`scores import PATH --as 工号` and `export cards|report … --out FILE.xlsx` (PRODUCT.md §5)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask

from bot.cli.common import cli_service


def register_report_cli(app: Flask) -> None:
    """Attach the score import and the workbook exports to the app's click group."""

    @app.cli.group("scores")
    def scores() -> None:
        """Score points (采分点) from other systems."""

    @scores.command("import")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--as", "userid", required=True, help="工号 (or 企业微信账号) of the recorder")
    def scores_import(path: Path, userid: str) -> None:
        """Import sheet 采分 (学号 or 班级编号, 采分点, 值, 日期); checked like chat; all or nothing."""
        from models.authz import load_actor
        from models.directory import console_user
        from models.io.excel import ScoreImportError, import_scores

        service = cli_service()
        with service.sessions() as session:
            actor = load_actor(session, userid)
            if actor is None or not actor.is_staff:
                what = "不是教职工" if actor is not None else "找不到该工号"
                click.echo(f"--as {userid}：{what}，未导入任何内容。", err=True)
                sys.exit(1)
            actor.console_user = console_user()  # the audit rows name who ran the import
            try:
                report = import_scores(session, service.catalogue, path, actor, service.today())
            except ScoreImportError as exc:
                session.rollback()
                click.echo(f"{path.name} 有 {len(exc.errors)} 处错误，未导入任何内容：", err=True)
                for line in exc.errors:
                    click.echo(f"  {line}", err=True)
                sys.exit(1)
            session.commit()
        click.echo(report.summary())
        evaluated = service.evaluate_queued()  # the early-warning check of what was imported
        if evaluated.outcome is not None:
            out = evaluated.outcome
            click.echo(f"预警检查：新开 {out.opened} 条，升级 {out.raised} 条，补充证据 {out.evidence} 条。")

    @app.cli.group("export")
    def export() -> None:
        """Workbooks for printing."""

    @export.command("cards")
    @click.option("--class", "class_code", help="班级编号 (or 班级名称)")
    @click.option("--department", help="系部名称: one sheet per class")
    @click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--with-sensitive", is_flag=True, help="include sensitive points (心理辅导频次 …)")
    def export_cards(class_code: str | None, department: str | None, out: Path, with_sensitive: bool) -> None:
        """The cards as a workbook: a row per student, every point, subtotals, total, value added."""
        from models.io.excel import cards_workbook

        if bool(class_code) == bool(department):
            click.echo("请给出 --class 班级编号 或 --department 系部名称（二选一）。", err=True)
            sys.exit(2)
        service = cli_service()
        with service.sessions() as session:
            classes = _classes(session, class_code, department)
            wb = cards_workbook(session, service.catalogue, classes, service.today(), sensitive=with_sensitive)
            wb.save(out)
        click.echo(f"已导出 {len(classes)} 个班级的储值卡：{out}")

    @export.command("report")
    @click.option("--class", "class_code", required=True, help="班级编号 (or 班级名称)")
    @click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--with-sensitive", is_flag=True, help="include sensitive points (心理辅导频次 …)")
    def export_report(class_code: str, out: Path, with_sensitive: bool) -> None:
        """A class's 学生学业情况分析报告: summary sheet and card sheet."""
        from models.io.excel import report_workbook

        service = cli_service()
        with service.sessions() as session:
            (klass,) = _classes(session, class_code, None)
            report_workbook(session, service.catalogue, klass, service.today(), sensitive=with_sensitive).save(out)
        click.echo(f"已导出 {klass.name} 的学生学业情况分析报告：{out}")


def _classes(session, class_code: str | None, department: str | None) -> list:  # noqa: ANN001
    """The classes asked for, or exit 1 with a message naming what was not found."""
    from sqlalchemy import select

    from models.schema import Department, SchoolClass

    if class_code:
        klass = session.scalar(select(SchoolClass).where(SchoolClass.code == class_code)) or session.scalar(
            select(SchoolClass).where(SchoolClass.name == class_code).limit(1))
        if klass is None:
            click.echo(f"找不到班级“{class_code}”。", err=True)
            sys.exit(1)
        return [klass]
    dept = session.scalar(select(Department).where(Department.name == department))
    if dept is None:
        click.echo(f"找不到系部“{department}”。", err=True)
        sys.exit(1)
    classes = list(session.scalars(select(SchoolClass).where(SchoolClass.department_id == dept.id)
                                   .order_by(SchoolClass.code)))
    if not classes:
        click.echo(f"{department}没有班级。", err=True)
        sys.exit(1)
    return classes
