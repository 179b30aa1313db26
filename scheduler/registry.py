"""Jobs with fixed ids: each is a module-level function run by the scheduler or by `jobs run`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.orm import Session

from models.catalogue import Catalogue
from models.periods import Calendar
from models.scores import load_calendar


@dataclass
class JobContext:
    """What a job may use: a session (its transaction), the clock it runs at, the catalogue."""

    session: Session
    now: datetime  # aware, in APP_TIMEZONE; `jobs run --now` sets it
    catalogue: Catalogue
    public_base_url: str

    @property
    def today(self) -> date:
        return self.now.date()

    @cached_property
    def calendar(self) -> Calendar:
        return load_calendar(self.session)


JobFunc = Callable[[JobContext], str]


@dataclass(frozen=True)
class Job:
    """A job: its fixed id, what it does, when it runs (cron fields in APP_TIMEZONE)."""

    name: str
    func: JobFunc
    cron: dict[str, str]
    description: str

    def trigger(self, timezone: str) -> CronTrigger:
        return CronTrigger(timezone=timezone, **self.cron)

    @property
    def schedule(self) -> str:
        fields = ("month", "day", "day_of_week", "hour", "minute")
        return " ".join(f"{f}={self.cron[f]}" for f in fields if f in self.cron)


CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_schedule(text: str) -> dict[str, str]:
    """`fri 15:10` → {"day_of_week": "fri", "hour": "15", "minute": "10"}; checked by APScheduler."""
    tokens = text.split()
    if not tokens or not (match := _TIME.match(tokens[-1])):
        raise ValueError(f"schedule {text!r}: expected '[DAYS] HH:MM', e.g. 'fri 15:10'")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ValueError(f"schedule {text!r}: no such time of day")
    cron = {"hour": str(hour), "minute": str(minute)}
    for token in tokens[:-1]:
        name, sep, value = token.partition("=")
        if not sep:
            name, value = "day_of_week", token
        if name not in CRON_FIELDS or not value:
            raise ValueError(f"schedule {text!r}: unknown cron field {name!r}")
        cron[name] = value
    CronTrigger(timezone="UTC", **cron)  # raises ValueError on a bad field value
    return cron


JOBS: dict[str, Job] = {}


def job(name: str, description: str, **cron: str) -> Callable[[JobFunc], JobFunc]:
    """Register a job under a fixed id; the function returns a one-line result for `jobs list`."""
    def register(func: JobFunc) -> JobFunc:
        if name in JOBS:
            raise ValueError(f"job {name} registered twice")
        JOBS[name] = Job(name, func, cron, description)
        return func
    return register
