"""帮助: the commands and points the sender may use, for their own roles."""

from __future__ import annotations

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.authz import recordable_classes


@registry.command("帮助", "help", "?", "菜单", summary="chat/help/help.txt")
def help_command(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Help for the sender's own roles."""
    actor = ctx.actor
    points = []
    if actor.is_staff:
        for p in ctx.catalogue.points:
            if p.derived is None and recordable_classes(actor, p) != set():
                points.append(p.short)
    # A summary may name a setting, e.g. {{ settings.export_link_hours }}.
    summaries = [render(c.summary, settings=ctx.settings, actor=actor)
                 for c in registry.visible_to(actor) if c.summary]
    return Reply(render("chat/help.txt", actor=actor, summaries=summaries,
                        points=list(dict.fromkeys(points))))
