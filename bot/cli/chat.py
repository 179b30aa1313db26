"""`chat --as USERID`: the console channel."""

from __future__ import annotations

import sys

import click
from flask import Flask

from bot.cli.common import cli_service


def register(app: Flask) -> None:
    """Attach the `chat` command."""

    @app.cli.command("chat")
    @click.option("--as", "userid", required=True, help="企业微信账号, 工号 or 学号")
    def chat(userid: str) -> None:
        """The console channel: the same conversation in a terminal."""
        from bot.channels.console import run_console

        sys.exit(run_console(cli_service(), userid))
