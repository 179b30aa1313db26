"""Jobs of the early warnings: the daily risk scan and the escalation of warnings left unhandled.

Both only write warnings and outbox rows (delivery is the outbox's job), and both are safe to
run twice: a rule whose evidence is already on a warning adds nothing, and a person is told of
each warning event once (a `RiskNotice` row, and the outbox key warning id + event).

Schedules come from the environment, read once by core/config.py, as `[DAYS] HH:MM` (core/schedules.py):

- `RISK_SCAN_CRON` (`06:40`): every rule for every student, from aggregates over each rule's window;
- `WARNING_ESCALATION_CRON` (`hour=8-20 00:25`: hourly at :25 from 08:25 to 20:25): warnings still
  open after WARNING_ESCALATE_AFTER_DAYS (3) go to the department's 学工办 and 系部主任.

The delay and the weekly cap per person are in models/risk/risk_rules.toml ([policy]), overridable by
WARNING_ESCALATE_AFTER_DAYS and WARNING_WEEKLY_CAP.
"""

from __future__ import annotations

from models.risk.checks import escalate, scan
from models.risk.rules import RuleBook, rule_book
from scheduler.notify import warnings as notify
from scheduler.registry import JobContext, job


def _rules(ctx: JobContext) -> RuleBook:
    return rule_book(ctx.settings, ctx.catalogue)


@job("risk_scan", "Evaluate every early-warning rule for every student; open or raise warnings")
def risk_scan(ctx: JobContext) -> str:
    """The daily scan: set-based over every rule's window (no per-student queries)."""
    out = scan(ctx.session, _rules(ctx), ctx.catalogue, ctx.calendar, ctx.now, ctx.today, notify=notify,
               tz=ctx.now.tzinfo)
    return f"{ctx.today.isoformat()}: {out.students} students matched a rule; {out.line()}"


@job("warning_escalation", "Escalate warnings left unhandled to the department's 学工办 and 系部主任")
def warning_escalation(ctx: JobContext) -> str:
    """Warnings still open after the escalation delay, escalated once each."""
    count, notices = escalate(ctx.session, _rules(ctx), ctx.now, ctx.today, notify=notify, tz=ctx.now.tzinfo)
    return (f"{count} warnings escalated; queued {notices.single} messages, {notices.bundled} bundled"
            + (f", {notices.no_account} people without WeCom account" if notices.no_account else ""))
