"""`menu sync`: create the WeCom app's and the Official Account's menus from templates/menus.toml."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app

from bot.cli.common import say
from core.config import ROOT
from core.render import render

MENUS = ROOT / "templates" / "menus.toml"


def load_menus(path: Path = MENUS) -> dict[str, dict[str, Any]]:
    """The menu of each channel ("wecom", "mp"), in WeChat's own shape."""
    with path.open("rb") as f:
        return tomllib.load(f)


def register(app: Flask) -> None:
    """Attach the `menu` group."""

    @app.cli.group("menu")
    def menu() -> None:
        """The menus of the WeCom app and of the Official Account."""

    @menu.command("sync")
    def menu_sync() -> None:
        """Post both menus (a channel not configured is skipped); exit 1 if WeChat refused one."""
        import redis

        from wechat.mp_api import MpAPI
        from wechat.token import WeChatAPIError
        from wechat.wecom_api import WeComAPI

        settings = current_app.extensions["czk"].settings
        menus = load_menus()
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5,
                                      socket_timeout=1) if settings.redis_url else None
        channels = {
            "wecom": (lambda: WeComAPI(settings, client))
            if settings.wecom_corp_id and settings.wecom_secret and settings.wecom_agent_id else None,
            "mp": (lambda: MpAPI(settings, client)) if settings.mp_app_id and settings.mp_app_secret else None,
        }
        failed = False
        for channel, make in channels.items():
            if make is None:
                say("menu_skipped", channel=channel)
                continue
            body = menus[channel]
            try:
                make().create_menu(body)
            except WeChatAPIError as exc:
                click.echo(render("cli/menu_failed.txt", channel=channel, errcode=exc.errcode, errmsg=exc.errmsg,
                                  http_status=exc.http_status), err=True)
                failed = True
                continue
            say("menu_synced", channel=channel, names=[b["name"] for b in body["button"]])
        if failed:
            sys.exit(1)

