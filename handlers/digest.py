"""本周概况: the weekly digest for the sender's scope (系部主任: their department; 院领导: the college), now,
ending with a link to the dashboard (/h5/dashboard) signed for the sender."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from core.messages import IncomingMessage, Reply
from core.render import fit_ending, fit_sections, render, utf8_size
from handlers.registry import Context, registry
from models.digest.college import build_college, overview_is_quick
from models.digest.recipients import scope_of
from models.digest.summary import SECTIONS, digest_context
from models.page_links import CHANNELS, page_link
from models.risk.rules import rule_book
from models.schema import OverviewRequest
from wechat.wecom_api import MAX_TEXT_BYTES


@registry.command("本周概况", "周概况", audience="staff", roles=("系部主任", "院领导"),
                  summary="chat/help/digest.txt")
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
    data = build_college(ctx.session, ctx.catalogue, ctx.calendar, ctx.today, ZoneInfo(ctx.settings.timezone),
                         rule_book(ctx.settings, ctx.catalogue))
    link = (render("digest/link.txt", url=page_link(ctx.settings, ctx.msg.channel, ctx.msg.sender, "/h5/dashboard"))
            if ctx.msg.channel in CHANNELS else "")
    # The text the scheduler pushes when the answer had to wait (scheduler/notify/digest.weekly_text);
    # its sections are fitted into what the link leaves.
    room = MAX_TEXT_BYTES - (utf8_size(link) + 1 if link else 0)
    text = fit_sections("digest/weekly.txt", SECTIONS, room, "digest/cut.txt",
                        **digest_context(data, person.department_id))
    return Reply(fit_ending(text, link, MAX_TEXT_BYTES) if link else text)
