"""退订周报 / 订阅周报: a student turns the weekly personal card off and on; a parent, the child's."""

from __future__ import annotations

import json

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.binding import set_weekly_card
from models.schema import AuditLog, Student


def _set_weekly_card(ctx: Context, wanted: bool) -> bool:
    """Set the student's flag, or a parent's on their binding (audited); True when it already had that value."""
    if ctx.actor.is_parent:
        return bool(set_weekly_card(ctx.session, ctx.actor.userid, wanted, actor=ctx.actor.audit_name,
                                    source_msg=ctx.msg.msg_key))
    student = ctx.session.get(Student, ctx.actor.student_id)
    already = student.weekly_card == wanted
    if not already:
        ctx.session.add(AuditLog(
            actor=ctx.actor.audit_name, action="subscribe" if wanted else "unsubscribe", entity="student",
            entity_key=f"student:{student.id}", old_value=json.dumps({"weekly_card": student.weekly_card}),
            new_value=json.dumps({"weekly_card": wanted}), source_msg=ctx.msg.msg_key,
        ))
        student.weekly_card = wanted
    return already


@registry.command("退订周报", audience="student|parent", summary="chat/help/subscription.txt")
def unsubscribe(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Stop the weekly personal card."""
    return Reply(render("chat/subscription_off.txt", already=_set_weekly_card(ctx, False),
                        parent=ctx.actor.is_parent))


@registry.command("订阅周报", audience="student|parent")
def subscribe(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Resume the weekly personal card."""
    return Reply(render("chat/subscription_on.txt", already=_set_weekly_card(ctx, True)))
