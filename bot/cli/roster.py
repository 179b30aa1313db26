"""`roster import PATH` and `roster template PATH`: the roster (名册)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask

from bot.cli.common import run_import, say


def register(app: Flask) -> None:
    """Attach the `roster` group."""

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
        say("roster_template_written", path=path)
