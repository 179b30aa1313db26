"""Times of the warnings: stored in UTC, shown in the service's time zone (settings.timezone)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, tzinfo

from models.schema import utcnow


def as_utc(value: datetime) -> datetime:
    """Stored times are UTC (SQLite keeps no offset: a local time would be read back as UTC)."""
    return aware(value).astimezone(UTC)


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def local(value: datetime, tz: tzinfo) -> datetime:
    """A stored time as people read it, in the service's time zone."""
    return aware(value).astimezone(tz)


def moment(today: date, tz: tzinfo) -> datetime:
    """A handler's clock: now, or noon of `today` when the service runs on a fixed clock (tests)."""
    now = utcnow()
    if local(now, tz).date() == today:
        return now
    return datetime.combine(today, time(12, 0), tz).astimezone(UTC)
