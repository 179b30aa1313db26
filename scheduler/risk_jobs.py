"""Jobs of the early warnings: the daily risk scan and the escalation of warnings left unhandled.

Both only write warnings and outbox rows (delivery is the outbox's job), and both are safe to
run twice: a rule whose evidence is already on a warning adds nothing, and a person is told of
each warning event once (a `RiskNotice` row, and the outbox key warning id + event).

Schedules come from the environment, read once here, as `[DAYS] HH:MM` (see scheduler/reminders.py):

- `RISK_SCAN_CRON` (`06:40`): every rule for every student, from aggregates over each rule's window;
- `WARNING_ESCALATION_CRON` (`hour=8-20 00:25`: hourly at :25 from 08:25 to 20:25): warnings still
  open after WARNING_ESCALATE_AFTER_DAYS (3) go to the department's 学工办 and 系部主任.

The delay and the weekly cap per person are in models/risk/risk_rules.toml ([policy]), overridable by
WARNING_ESCALATE_AFTER_DAYS and WARNING_WEEKLY_CAP.
"""

from __future__ import annotations

import os

from models import risk
from scheduler.registry import JobContext, job
from scheduler.reminders import parse_schedule


def _schedule(var: str, default: str) -> dict[str, str]:
    value = (os.environ.get(var) or "").strip() or default
    try:
        return parse_schedule(value)
    except ValueError as exc:
        raise ValueError(f"{var}: {exc}") from None


@job("risk_scan", "Evaluate every early-warning rule for every student; open or raise warnings",
     **_schedule("RISK_SCAN_CRON", "06:40"))
def risk_scan(ctx: JobContext) -> str:
    """The daily scan: set-based over every rule's window (no per-student queries)."""
    out = risk.scan(ctx.session, ctx.catalogue, ctx.calendar, ctx.now, ctx.today)
    return f"{ctx.today.isoformat()}: {out.students} students matched a rule; {out.line()}"


@job("warning_escalation", "Escalate warnings left unhandled to the department's 学工办 and 系部主任",
     **_schedule("WARNING_ESCALATION_CRON", "hour=8-20 00:25"))
def warning_escalation(ctx: JobContext) -> str:
    """Warnings still open after the escalation delay, escalated once each."""
    count, notices = risk.escalate(ctx.session, ctx.catalogue, ctx.now, ctx.today)
    return (f"{count} warnings escalated; queued {notices.single} messages, {notices.bundled} bundled"
            + (f", {notices.no_account} people without WeCom account" if notices.no_account else ""))
