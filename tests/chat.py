"""Drive the real pipeline with a fixed clock, as a channel would."""

from __future__ import annotations

import itertools
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from bot.config import load_settings
from bot.messages import IncomingMessage
from bot.pipeline import handle_message
from bot.service import Service

_ids = itertools.count(1)


def make_service(db_url: str, today: date, redis_url: str | None = None) -> Service:
    settings = load_settings({"database_url": db_url, "redis_url": redis_url, "secret_key": "test"})
    tz = ZoneInfo(settings.timezone)
    return Service(settings, clock=lambda: datetime.combine(today, time(10, 0), tz))


def say(service: Service, userid: str, text: str, msg_key: str | None = None) -> str:
    key = msg_key or f"t{next(_ids)}"
    return handle_message(service, IncomingMessage("console", userid, text, msg_key=key)).text
