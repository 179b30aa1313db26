"""What every command needs: the app's service once the schema is current, and its messages
(templates/cli/)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

import click
from flask import current_app
from sqlalchemy.orm import Session

from core.render import render
from models.service import Service


def say(template: str, /, **context: object) -> None:
    """Print templates/cli/<template>.txt on stdout."""
    click.echo(render(f"cli/{template}.txt", **context))


def fail(template: str, code: int, /, **context: object) -> NoReturn:
    """Print templates/cli/<template>.txt on stderr and exit with `code`."""
    click.echo(render(f"cli/{template}.txt", **context), err=True)
    sys.exit(code)


def cli_service() -> Service:
    """The app's service, once the schema is known to be current (else a clear message, exit 2)."""
    service = current_app.extensions["czk"]
    require_schema(service)
    return service


def require_schema(service: Service) -> None:
    """Exit with what to do when tables of the models are missing (`db upgrade` not run, or a
    migration that adds tables not yet applied)."""
    if getattr(service, "schema_checked", False):
        return
    from sqlalchemy import inspect

    from models.db import Base

    missing = set(Base.metadata.tables) - set(inspect(service.engine).get_table_names())
    if missing:
        fail("schema_missing", 2)
    service.schema_checked = True


def run_import(importer: Callable[[Session], object], error_type: type[Exception], what: str) -> None:
    """Run an all-or-nothing import in one transaction: commit and print its summary, or list every error."""
    service = cli_service()
    with service.sessions() as session:
        try:
            report = importer(session)
        except error_type as exc:
            session.rollback()
            errors = [render("errors/problem.txt", p=p) for p in exc.problems]  # type: ignore[attr-defined]
            fail("import_errors", 1, what=what, file=None, errors=errors)
        session.commit()
    say("import_report", report=report)
