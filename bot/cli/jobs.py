"""`jobs list` and `jobs run NAME [--now ISO-8601]`: the scheduled jobs."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from flask import Flask

from bot.cli.common import cli_service, fail


def register(app: Flask) -> None:
    """Attach the `jobs` group."""

    @app.cli.group("jobs")
    def jobs() -> None:
        """Scheduled jobs."""

    @jobs.command("list")
    def jobs_list() -> None:
        """Each job, its schedule, its last run and result."""
        from scheduler.jobs import scheduled_jobs
        from scheduler.runner import last_runs

        service = cli_service()
        runs = last_runs(service)

        def local(at: datetime) -> datetime:  # PostgreSQL answers in UTC; SQLite keeps the wall time it was given
            return at.astimezone(service.tz) if at.tzinfo else at

        for name, job in sorted(scheduled_jobs(service.settings).items()):
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
        import scheduler.jobs  # noqa: F401
        from scheduler.registry import JOBS
        from scheduler.runner import run_job

        service = cli_service()
        if name not in JOBS:
            fail("job_unknown", 2, name=name, names=sorted(JOBS))
        now = None
        if now_text:
            try:
                now = datetime.fromisoformat(now_text)
            except ValueError:
                fail("job_bad_now", 2, text=now_text)
            if now.tzinfo is None:
                now = now.replace(tzinfo=service.tz)
        run = run_job(service, name, now)
        click.echo(f"{name}: {run.status} — {run.result}")
        sys.exit(0 if run.status == "ok" else 1)
