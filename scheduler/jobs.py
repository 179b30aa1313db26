"""Every scheduled job: importing this module registers them all (one import line per area)."""

from __future__ import annotations

from core.config import Settings
from scheduler import digest_jobs, plan_cycle, reminders, risk_jobs, weekly_card  # noqa: F401
from scheduler.registry import JOBS, Job


def scheduled_jobs(settings: Settings) -> dict[str, Job]:
    """Every job, with its schedule from `settings`, in the order they were registered."""
    return {name: job.configured(settings) for name, job in JOBS.items()}
