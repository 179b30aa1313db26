"""`python -m bot COMMAND` (also `flask --app bot COMMAND`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask, current_app

from bot.config import ROOT
from bot.service import Service


def _service() -> Service:
    return current_app.extensions["czk"]


def alembic_config(url: str):  # noqa: ANN201
    """Alembic's configuration pointed at our migrations and `url`."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str) -> None:
    """Create or migrate the schema to the newest revision."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def register_cli(app: Flask) -> None:
    """Attach every command to the app's click group."""

    @app.cli.group("db")
    def db() -> None:
        """The database schema."""

    @db.command("upgrade")
    def db_upgrade() -> None:
        """Create or migrate the schema (Alembic)."""
        upgrade_database(_service().settings.database_url)
        click.echo("数据库已是最新结构。")

    @app.cli.group("roster")
    def roster() -> None:
        """The roster (名册)."""

    @roster.command("import")
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    def roster_import(path: Path) -> None:
        """Import a roster workbook (.xlsx) or a folder of .csv files; all or nothing."""
        from models.roster import RosterError, import_roster

        service = _service()
        with service.sessions() as session:
            try:
                report = import_roster(session, path)
            except RosterError as exc:
                session.rollback()
                click.echo(f"名册有 {len(exc.errors)} 处错误，未导入任何内容：", err=True)
                for line in exc.errors:
                    click.echo(f"  {line}", err=True)
                sys.exit(1)
            session.commit()
        click.echo(report.summary())

    @roster.command("template")
    @click.argument("path", type=click.Path(path_type=Path))
    def roster_template(path: Path) -> None:
        """Write an empty roster workbook with the canonical sheets and headers."""
        from models.roster import write_template

        write_template(path)
        click.echo(f"已生成名册模板：{path}")

    @app.cli.command("demo")
    @click.option("--skip-if-loaded", is_flag=True, help="exit quietly if the database already has students")
    def demo(skip_if_loaded: bool) -> None:
        """Load the demo college into the configured database."""
        from sqlalchemy import select

        from models.demo import load_demo
        from models.schema import Student

        service = _service()
        with service.sessions() as session:
            if skip_if_loaded and session.scalar(select(Student.id).limit(1)) is not None:
                click.echo("数据库里已有学生，跳过演示数据。")
                return
            try:
                report = load_demo(session, service.catalogue, service.today())
            except ValueError as exc:
                click.echo(str(exc), err=True)
                sys.exit(1)
            session.commit()
        click.echo(report.summary())

    @app.cli.command("chat")
    @click.option("--as", "userid", required=True, help="企业微信账号, 工号 or 学号")
    def chat(userid: str) -> None:
        """The console channel: the same conversation in a terminal."""
        from bot.console import run_console

        sys.exit(run_console(_service(), userid))

    @app.cli.command("serve")
    @click.option("--host", default="127.0.0.1")
    @click.option("--port", default=8000, type=int)
    def serve(host: str, port: int) -> None:
        """Development server (production: gunicorn 'bot:create_app()')."""
        current_app.run(host=host, port=port, use_reloader=False)
