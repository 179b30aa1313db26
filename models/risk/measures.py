"""The measures the digest reports: time to first action, the share handled within 72 hours,
and the false-alarm share per rule (1 − its precision as the people acting on it judged it)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.risk.clock import aware
from models.risk.rules import ACTION_KINDS, EVIDENCE_KINDS, FALSE_ALARM, OPEN
from models.schema import RiskWarning, RiskWarningEvent


@dataclass(frozen=True)
class FirstAction:
    """How long a warning waited for its first action (处理 or 误报); None while nobody acted."""

    warning_id: int
    category: str
    level: str
    opened_at: datetime
    acted_at: datetime | None

    @property
    def hours(self) -> float | None:
        return None if self.acted_at is None else (self.acted_at - self.opened_at).total_seconds() / 3600


@dataclass(frozen=True)
class Share:
    """A share with its counts (share is None when nothing counts)."""

    hits: int
    total: int

    @property
    def share(self) -> float | None:
        return self.hits / self.total if self.total else None


def time_to_first_action(session: Session, since: datetime, until: datetime) -> list[FirstAction]:
    """Every warning opened in [since, until) with the time of its first action by `until`, if any."""
    first = (select(RiskWarningEvent.warning_id, func.min(RiskWarningEvent.at).label("at"))
             .where(RiskWarningEvent.kind.in_(ACTION_KINDS)).group_by(RiskWarningEvent.warning_id).subquery())
    rows = session.execute(
        select(RiskWarning.id, RiskWarning.category, RiskWarning.level, RiskWarning.opened_at, first.c.at)
        .outerjoin(first, first.c.warning_id == RiskWarning.id)
        .where(RiskWarning.opened_at >= since, RiskWarning.opened_at < until).order_by(RiskWarning.id)).all()
    # As of `until`: an action taken later does not count yet.
    return [FirstAction(wid, cat, level, aware(opened), aware(at) if at and aware(at) <= until else None)
            for wid, cat, level, opened, at in rows]


def handled_within(session: Session, since: datetime, until: datetime, hours: float = 72) -> Share:
    """Of the warnings opened in [since, until) whose deadline has passed by `until` (or that were
    acted on already), the share acted on within `hours`."""
    hits = total = 0
    for item in time_to_first_action(session, since, until):
        if item.acted_at is None and item.opened_at + timedelta(hours=hours) > until:
            continue  # still within its time: neither late nor on time yet
        total += 1
        hits += item.hours is not None and item.hours <= hours
    return Share(hits, total)


def false_alarm_shares(session: Session, since: datetime, until: datetime) -> dict[str, Share]:
    """Per rule: of the closed warnings (closed in [since, until)) it gave evidence to, the share marked 误报.

    1 − share is the rule's precision as the people acting on it judged it.
    """
    rows = session.execute(
        select(RiskWarningEvent.rule_id, RiskWarning.id, RiskWarning.status)
        .join(RiskWarning, RiskWarning.id == RiskWarningEvent.warning_id)
        .where(RiskWarning.status != OPEN, RiskWarning.closed_at >= since, RiskWarning.closed_at < until,
               RiskWarningEvent.rule_id.is_not(None), RiskWarningEvent.kind.in_(EVIDENCE_KINDS))
        .distinct()).all()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rid, _wid, status in rows:
        counts[rid][1] += 1
        counts[rid][0] += status == FALSE_ALARM
    return {rid: Share(h, t) for rid, (h, t) in sorted(counts.items())}


@dataclass(frozen=True)
class WarningMeasures:
    """The three measures the digest reports for a period."""

    first_actions: list[FirstAction]
    within_72h: Share
    false_alarms: dict[str, Share]


def warning_measures(session: Session, since: datetime, until: datetime) -> WarningMeasures:
    """Time to first action per warning, share handled within 72 h, false-alarm share per rule."""
    return WarningMeasures(time_to_first_action(session, since, until), handled_within(session, since, until),
                           false_alarm_shares(session, since, until))

