"""`tasks import PATH`: plan tasks (任务分解表)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask

from bot.cli.common import run_import


def register(app: Flask) -> None:
    """Attach the `tasks` group."""

    @app.cli.group("tasks")
    def tasks() -> None:
        """Plan tasks (任务分解表)."""

    @tasks.command("import")
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    def tasks_import(path: Path) -> None:
        """Import a 任务分解表 workbook (.xlsx) or .csv; upsert by 编号; all or nothing."""
        from models.io.tasks_import import TaskImportError, import_tasks

        run_import(lambda session: import_tasks(session, path), TaskImportError, "任务表")
