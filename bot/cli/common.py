"""What every command needs: the app's service, once the schema is current."""

from __future__ import annotations

import sys

import click
from flask import current_app

from models.service import Service


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
        click.echo("数据库还没有建好或版本落后：请先运行 python -m bot db upgrade", err=True)
        sys.exit(2)
    service.schema_checked = True
