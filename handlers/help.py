"""帮助: the commands and points the sender may use, for their own roles."""

from __future__ import annotations

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.authz import recordable_classes


@registry.command("帮助", "help", "?", "菜单", summary="帮助：查看可用命令")
def help_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Help for the sender's own roles."""
    actor = ctx.actor
    points = []
    if actor.is_staff:
        for p in ctx.catalogue.points:
            if p.derived is None and recordable_classes(actor, p) != set():
                points.append(p.short)
    commands = [c for c in registry.visible_to(actor) if c.summary]
    return Reply(render("chat/help.txt", actor=actor, commands=commands,
                        points=list(dict.fromkeys(points))))
