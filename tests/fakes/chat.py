"""Drive the real pipeline with a fixed clock, as a channel would."""

from __future__ import annotations

import itertools
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from bot import service as runtime
from bot.pipeline import handle_message
from core.config import load_settings
from core.messages import IncomingMessage
from models.service import Service

_ids = itertools.count(1)


def make_service(db_url: str, today: date, redis_url: str | None = None) -> Service:
    settings = load_settings({"database_url": db_url, "redis_url": redis_url, "secret_key": "test"})
    tz = ZoneInfo(settings.timezone)
    return runtime.make_service(settings, clock=lambda: datetime.combine(today, time(10, 0), tz))


def say(service: Service, userid: str, text: str, msg_key: str | None = None) -> str:
    key = msg_key or f"t{next(_ids)}"
    return handle_message(service, IncomingMessage("console", userid, text, msg_key=key)).text


def live_entries(session, point_code=None):
    """The score entries not undone, re-read from the database."""
    from sqlalchemy import select

    from models.schema import ScoreEntry

    session.expire_all()
    q = select(ScoreEntry).where(ScoreEntry.revoked_at.is_(None))
    if point_code:
        q = q.where(ScoreEntry.point_code == point_code)
    return session.scalars(q.order_by(ScoreEntry.id)).all()


def student_id(session, name):
    from sqlalchemy import select

    from models.schema import Student

    return session.scalar(select(Student.id).where(Student.name == name))
