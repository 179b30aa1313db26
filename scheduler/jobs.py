"""Importing this module registers every scheduled job."""

from scheduler import plan_cycle, reminders  # noqa: F401
