"""`python -m bot COMMAND` (also `flask --app bot COMMAND`)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click
from flask import Flask, current_app
from werkzeug.serving import WSGIRequestHandler

from bot.cli.common import cli_service, require_schema  # noqa: F401  (used by the commands below)
from bot.cli.reports import register_report_cli
from bot.redact import redact
from core.config import ROOT


class RedactingRequestHandler(WSGIRequestHandler):
    """`serve`'s request log (werkzeug's), without bearer links, as gunicorn's access log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The response is under way (the application has run): these are read only to be logged now.
        self.requestline = redact(self.requestline)
        if isinstance(getattr(self, "path", None), str):
            self.path = redact(self.path)
        super().log_request(code, size)


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


def run_import(importer, error_type: type[Exception], what: str) -> None:  # noqa: ANN001
    """Run an all-or-nothing import in one transaction: commit and print its summary, or list every error."""
    service = cli_service()
    with service.sessions() as session:
        try:
            report = importer(session)
        except error_type as exc:
            session.rollback()
            errors = getattr(exc, "errors", [str(exc)])
            click.echo(f"{what}有 {len(errors)} 处错误，未导入任何内容：", err=True)
            for line in errors:
                click.echo(f"  {line}", err=True)
            sys.exit(1)
        session.commit()
    click.echo(report.summary())


def register_cli(app: Flask) -> None:
    """Attach every command to the app's click group."""
    register_report_cli(app)

    @app.cli.group("db")
    def db() -> None:
        """The database schema."""

    @db.command("upgrade")
    def db_upgrade() -> None:
        """Create or migrate the schema (Alembic)."""
        upgrade_database(current_app.extensions["czk"].settings.database_url)  # no schema check: it makes one
        click.echo("数据库已是最新结构。")

    @app.cli.group("roster")
    def roster() -> None:
        """The roster (名册)."""

    @roster.command("import")
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    def roster_import(path: Path) -> None:
        """Import a roster workbook (.xlsx) or a folder of .csv files; all or nothing."""
        from models.io.roster import RosterError, import_roster

        run_import(lambda session: import_roster(session, path), RosterError, "名册")

    @roster.command("template")
    @click.argument("path", type=click.Path(path_type=Path))
    def roster_template(path: Path) -> None:
        """Write an empty roster workbook with the canonical sheets and headers."""
        from models.io.roster import write_template

        write_template(path)
        click.echo(f"已生成名册模板：{path}")

    @app.cli.group("tasks")
    def tasks() -> None:
        """Plan tasks (任务分解表)."""

    @tasks.command("import")
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    def tasks_import(path: Path) -> None:
        """Import a 任务分解表 workbook (.xlsx) or .csv; upsert by 编号; all or nothing."""
        from models.tasks import TaskImportError, import_tasks

        run_import(lambda session: import_tasks(session, path), TaskImportError, "任务表")

    @app.cli.command("demo")
    @click.option("--skip-if-loaded", is_flag=True, help="exit quietly if the database already has students")
    @click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
                  help="fill the history up to this day instead of today (YYYY-MM-DD)")
    def demo(skip_if_loaded: bool, today: datetime | None) -> None:
        """Load the demo college into the configured database."""
        from sqlalchemy import select

        from models.io.demo import load_demo
        from models.schema import Student

        service = cli_service()
        with service.sessions() as session:
            if skip_if_loaded and session.scalar(select(Student.id).limit(1)) is not None:
                click.echo("数据库里已有学生，跳过演示数据。")
                return
            try:
                report = load_demo(session, service.catalogue, today.date() if today else service.today())
            except ValueError as exc:
                click.echo(str(exc), err=True)
                sys.exit(1)
            session.commit()
        click.echo(report.summary())

    @app.cli.command("chat")
    @click.option("--as", "userid", required=True, help="企业微信账号, 工号 or 学号")
    def chat(userid: str) -> None:
        """The console channel: the same conversation in a terminal."""
        from bot.channels.console import run_console

        sys.exit(run_console(cli_service(), userid))

    @app.cli.command("scheduler")
    def scheduler_command() -> None:
        """The scheduler process: exactly one is active, others wait as standbys."""
        import signal
        import threading

        from scheduler.runner import run_scheduler

        service = cli_service()
        stop = threading.Event()
        # SIGTERM or Ctrl-C: finish the running job, let the lease go (a standby takes over at once).
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        run_scheduler(service, stop)

    @app.cli.group("jobs")
    def jobs() -> None:
        """Scheduled jobs."""

    @jobs.command("list")
    def jobs_list() -> None:
        """Each job, its schedule, its last run and result."""
        from scheduler.registry import JOBS
        from scheduler.runner import last_runs

        service = cli_service()
        runs = last_runs(service)

        def local(at: datetime) -> datetime:  # PostgreSQL answers in UTC; SQLite keeps the wall time it was given
            return at.astimezone(service.tz) if at.tzinfo else at

        for name, job in sorted(JOBS.items()):
            run = runs.get(name)
            last = (f"{local(run.as_of):%Y-%m-%d %H:%M} {run.status}: {run.result or ''}" if run else "never run")
            click.echo(f"{name:<26} {job.schedule:<40} {last}")
        beat = runs.get("heartbeat")
        click.echo(f"{'scheduler':<26} {'(the active process)':<40} "
                   + (f"alive at {local(beat.as_of):%Y-%m-%d %H:%M} as {beat.result}" if beat else "not seen yet"))

    @jobs.command("run")
    @click.argument("name")
    @click.option("--now", "now_text", help="ISO-8601; without an offset it is read in APP_TIMEZONE")
    def jobs_run(name: str, now_text: str | None) -> None:
        """Run one job once, as if the clock read --now."""
        from datetime import datetime

        import scheduler.jobs  # noqa: F401
        from scheduler.registry import JOBS
        from scheduler.runner import run_job

        service = cli_service()
        if name not in JOBS:
            click.echo(f"没有名为 {name} 的任务。可用：{', '.join(sorted(JOBS))}", err=True)
            sys.exit(2)
        now = None
        if now_text:
            try:
                now = datetime.fromisoformat(now_text)
            except ValueError:
                click.echo(f"--now 不是 ISO-8601 时间：{now_text}", err=True)
                sys.exit(2)
            if now.tzinfo is None:
                now = now.replace(tzinfo=service.tz)
        run = run_job(service, name, now)
        click.echo(f"{name}: {run.status} — {run.result}")
        sys.exit(0 if run.status == "ok" else 1)

    @app.cli.group("outbox")
    def outbox() -> None:
        """Outbound messages."""

    @outbox.command("flush")
    def outbox_flush() -> None:
        """Deliver pending outbound messages now (printed when WeCom is not configured)."""
        from scheduler.delivery import make_deliverer

        report = make_deliverer(cli_service(), out=sys.stdout).flush()
        click.echo(report.summary())

    @outbox.command("failed")
    def outbox_failed() -> None:
        """Messages that could not be delivered, with the reason (for the 管理员)."""
        from sqlalchemy import select

        from models.schema import OutboxMessage

        with cli_service().sessions() as session:
            rows = session.scalars(select(OutboxMessage).where(OutboxMessage.status == "failed")
                                   .order_by(OutboxMessage.id)).all()
        for r in rows:
            click.echo(f"#{r.id} {r.recipient} {r.purpose} {r.period_key}: {r.last_error}")
        click.echo(f"共 {len(rows)} 条发送失败。")

    @outbox.command("retry")
    @click.option("--id", "ids", type=int, multiple=True, help="Only this failed message (repeatable).")
    def outbox_retry(ids: tuple[int, ...]) -> None:
        """Queue failed messages (all, or the given --id) again for delivery, attempts reset."""
        from scheduler.delivery import retry_failed

        with cli_service().sessions() as session:
            count = retry_failed(session, list(ids) or None)
        click.echo(f"已重新排队 {count} 条消息，将在下次投递时发送。")

    @app.cli.command("serve")
    @click.option("--host", default="127.0.0.1")
    @click.option("--port", default=8000, type=int)
    def serve(host: str, port: int) -> None:
        """A web server in the foreground, every route, until Ctrl-C or SIGTERM (production: gunicorn
        'bot:create_app()')."""
        import signal

        from werkzeug.serving import run_simple

        cli_service()  # the schema must be current

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # werkzeug's serve_forever ends on it and closes the socket

        # Not app.run(): under a FlaskGroup (FLASK_RUN_FROM_CLI) it returns at once without serving.
        signal.signal(signal.SIGTERM, stop)
        run_simple(host, port, current_app._get_current_object(), threaded=True, use_reloader=False,
                   request_handler=RedactingRequestHandler)
        click.echo("服务已停止。")
