"""`demo`: load the demo college into the configured database."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from flask import Flask

from bot.cli.common import cli_service, say
from core.render import render


def register(app: Flask) -> None:
    """Attach the `demo` command."""

    @app.cli.command("demo")
    @click.option("--skip-if-loaded", is_flag=True, help="exit quietly if the database already has students")
    @click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
                  help="fill the history up to this day instead of today (YYYY-MM-DD)")
    def demo(skip_if_loaded: bool, today: datetime | None) -> None:
        """Load the demo college into the configured database."""
        from sqlalchemy import select

        from models.io.demo import DemoRefused, load_demo
        from models.schema import Student

        service = cli_service()
        with service.sessions() as session:
            if skip_if_loaded and session.scalar(select(Student.id).limit(1)) is not None:
                say("demo_skipped")
                return
            try:
                day = today.date() if today else service.today()
                report = load_demo(session, service.catalogue, day, tz=service.tz)
            except DemoRefused as exc:
                click.echo(render("errors/problem.txt", p=exc.problems[0]), err=True)
                sys.exit(1)
            session.commit()
        say("demo_loaded", r=report)
