"""Importing this module registers every scheduled job."""

from scheduler import plan_cycle, reminders  # noqa: F401
from scheduler import risk_jobs as _risk_jobs  # noqa: F401
