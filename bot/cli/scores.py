"""`scores import PATH --as 工号`: score points (采分点) from other systems (PRODUCT.md §5)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask

from bot.cli.common import cli_service, fail, say
from core.render import render


def register(app: Flask) -> None:
    """Attach the `scores` group."""

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
        from models.io.scores_import import ScoreImportError, import_scores

        service = cli_service()
        with service.sessions() as session:
            actor = load_actor(session, userid)
            if actor is None or not actor.is_staff:
                fail("scores_not_staff", 1, userid=userid, found=actor is not None)
            actor.console_user = console_user()  # the audit rows name who ran the import
            try:
                report = import_scores(session, service.catalogue, path, actor, service.today(), rules=service.rules())
            except ScoreImportError as exc:
                session.rollback()
                fail("import_errors", 1, what=None, file=path.name,
                     errors=[render("errors/problem.txt", p=p) for p in exc.problems])
            session.commit()
        say("scores_imported", report=report)
        evaluated = service.evaluate_queued()  # the early-warning check of what was imported
        if evaluated.outcome is not None:
            say("scores_evaluated", out=evaluated.outcome)
