"""`db upgrade`: create or migrate the schema (Alembic)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

from bot.cli.common import say
from core.config import ROOT

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(url: str) -> Config:
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


def register(app: Flask) -> None:
    """Attach the `db` group."""

    @app.cli.group("db")
    def db() -> None:
        """The database schema."""

    @db.command("upgrade")
    def db_upgrade() -> None:
        """Create or migrate the schema (Alembic)."""
        upgrade_database(current_app.extensions["czk"].settings.database_url)  # no schema check: it makes one
        say("db_upgraded")
