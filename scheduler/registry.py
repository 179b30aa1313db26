"""Jobs with fixed ids: each is a module-level function run by the scheduler or by `jobs run`.

A job is registered with `@job(id, description)`; when it runs comes from the settings, read once by
`core.config.load_settings`: the variable and the default of each job id are in
`core.schedules.JOB_SCHEDULES`. `scheduler.jobs.scheduled_jobs(settings)` gives every job with its schedule, as the
scheduler (at its start) and `jobs list` use them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from functools import cached_property

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.orm import Session

from core.config import Settings
from core.schedules import JOB_SCHEDULES, CycleSettings, ReminderSettings, parse_schedule
from models.catalogue import Catalogue
from models.periods import Calendar
from models.scores import load_calendar


@dataclass
class JobContext:
    """What a job may use: a session (its transaction), the clock it runs at, the catalogue, and
    the service's settings (its schedules, reminder and plan-cycle settings, the rules' path)."""

    session: Session
    now: datetime  # aware, in APP_TIMEZONE; `jobs run --now` sets it
    catalogue: Catalogue
    settings: Settings

    @property
    def schedules(self) -> Mapping[str, dict[str, str]]:
        """Every job's schedule (cron fields), from the settings."""
        return self.settings.schedules

    @property
    def reminders(self) -> ReminderSettings:
        """The reminders' days and weeks."""
        return self.settings.reminders

    @property
    def cycle(self) -> CycleSettings:
        """The plan cycle's dates."""
        return self.settings.cycle

    @property
    def today(self) -> date:
        return self.now.date()

    @cached_property
    def calendar(self) -> Calendar:
        return load_calendar(self.session)


JobFunc = Callable[[JobContext], str]
Months = Callable[[CycleSettings], tuple[int, ...]]


@dataclass(frozen=True)
class Job:
    """A job: its fixed id, what it does, when it runs (cron fields in APP_TIMEZONE; the default
    schedule until `configured`)."""

    name: str
    func: JobFunc
    cron: dict[str, str]
    description: str
    months: Months | None = None  # runs only in these months, unless its schedule names `month=`

    def trigger(self, timezone: str) -> CronTrigger:
        """The APScheduler trigger of this schedule."""
        return CronTrigger(timezone=timezone, **self.cron)

    @property
    def schedule(self) -> str:
        """The schedule as `jobs list` shows it."""
        fields = ("month", "day", "day_of_week", "hour", "minute")
        return " ".join(f"{f}={self.cron[f]}" for f in fields if f in self.cron)

    def configured(self, settings: Settings) -> Job:
        """This job with its schedule from `settings`."""
        return replace(self, cron=_cron(settings.schedules.get(self.name, self.cron), self.months, settings.cycle))


def _cron(schedule: dict[str, str], months: Months | None, cycle: CycleSettings) -> dict[str, str]:
    out = dict(schedule)
    if months is not None and "month" not in out:
        out["month"] = ",".join(map(str, months(cycle)))
    return out


JOBS: dict[str, Job] = {}


def job(name: str, description: str, months: Months | None = None) -> Callable[[JobFunc], JobFunc]:
    """Register a job under a fixed id (its schedule's variable and default in
    core.schedules.JOB_SCHEDULES); the function returns a one-line result for `jobs list`."""
    def register(func: JobFunc) -> JobFunc:
        if name in JOBS:
            raise ValueError(f"job {name} registered twice")
        if name not in JOB_SCHEDULES:
            raise ValueError(f"job {name} has no schedule in core.schedules.JOB_SCHEDULES")
        default = _cron(parse_schedule(JOB_SCHEDULES[name][1]), months, CycleSettings())
        JOBS[name] = Job(name, func, default, description, months)
        return func
    return register
