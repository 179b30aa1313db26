"""Importing this module registers every scheduled job."""

from scheduler import digest_jobs, plan_cycle, reminders, risk_jobs, weekly_card  # noqa: F401
