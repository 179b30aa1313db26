"""Importing this module registers every scheduled job."""

from scheduler import plan_cycle, reminders, weekly_card  # noqa: F401
