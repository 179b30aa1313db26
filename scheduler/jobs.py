"""Importing this module registers every scheduled job."""

from scheduler import reminders  # noqa: F401
