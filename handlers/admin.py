"""发送失败: the 管理员's list of messages that could not be delivered, with the reason."""

from __future__ import annotations

from sqlalchemy import func, select

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.schema import OutboxMessage

SHOWN = 10


@registry.command("发送失败", audience="staff", roles=("管理员",), summary="chat/help/failed_deliveries.txt")
def failed_deliveries(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """The newest undeliverable messages (invalid account, too long, outcome unknown)."""
    total = ctx.session.scalar(select(func.count()).select_from(OutboxMessage)
                               .where(OutboxMessage.status == "failed"))
    rows = ctx.session.scalars(select(OutboxMessage).where(OutboxMessage.status == "failed")
                               .order_by(OutboxMessage.id.desc()).limit(SHOWN)).all()
    return Reply(render("chat/admin_failed.txt", rows=rows, total=total, shown=len(rows)))
