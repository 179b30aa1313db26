"""`outbox flush`, `outbox failed`, `outbox retry [--id N]`: outbound messages."""

from __future__ import annotations

import sys

import click
from flask import Flask

from bot.cli.common import cli_service, say


def register(app: Flask) -> None:
    """Attach the `outbox` group."""

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
        say("outbox_failed_total", count=len(rows))

    @outbox.command("retry")
    @click.option("--id", "ids", type=int, multiple=True, help="Only this failed message (repeatable).")
    def outbox_retry(ids: tuple[int, ...]) -> None:
        """Queue failed messages (all, or the given --id) again for delivery, attempts reset."""
        from scheduler.delivery import retry_failed

        with cli_service().sessions() as session:
            count = retry_failed(session, list(ids) or None)
        say("outbox_requeued", count=count)
