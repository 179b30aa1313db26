"""Importing this module registers every scheduled job."""

from scheduler import plan_cycle, reminders, risk_jobs, weekly_card  # noqa: F401
