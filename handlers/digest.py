"""本周概况: the weekly digest for the sender's scope (系部主任: their department; 院领导: the college), now."""

from __future__ import annotations

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.digest import build_college, digest_context, overview_is_quick, render_text, scope_of
from models.schema import OverviewRequest


@registry.command("本周概况", "周概况", audience="staff", roles=("系部主任", "院领导"),
                  summary="本周概况：上周的数据录入、领域平均分、增值、预警和逾期任务")
def weekly_overview(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """The same digest the Monday job sends, computed now, as plain text; when it cannot be computed
    within the channel's time limit (no recent state), a request the scheduler answers by push."""
    person = scope_of(ctx.session, ctx.actor.staff_id)
    if person is None:
        # 系部主任 by role but no department on record: nothing to slice.
        return Reply(render("digest/no_scope.txt"))
    if ctx.quick_reply and not overview_is_quick(ctx.session, ctx.catalogue, ctx.calendar, ctx.today):
        ctx.session.add(OverviewRequest(staff_id=ctx.actor.staff_id))
        return Reply(render("digest/deferred.txt"))
    data = build_college(ctx.session, ctx.catalogue, ctx.calendar, ctx.today)
    return Reply(render_text(digest_context(data, person.department_id)))
