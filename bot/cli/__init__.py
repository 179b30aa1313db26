"""`python -m bot COMMAND` (also `flask --app bot COMMAND`): one module per command group (PRODUCT.md §5).

A new command group is a module here with a `register(app)` function, added to GROUPS; what every
command needs (the service, the schema check, printing a message from templates/cli/) is in common.py.
"""

from __future__ import annotations

from flask import Flask

from bot.cli import binding, chat, db, demo, export, jobs, menu, outbox, roster, scheduler, scores, serve, tasks

GROUPS = (db, roster, tasks, scores, export, demo, chat, serve, scheduler, jobs, outbox, binding, menu)


def register_cli(app: Flask) -> None:
    """Attach every command group to the app's click group."""
    for group in GROUPS:
        group.register(app)
