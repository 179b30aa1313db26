"""The one place the runtime is wired: the Service with the words of its pushes.

`models` may not import `scheduler`, so the Service is handed scheduler/notify/warnings.py (the
`Notify` of models/risk/notices.py) here; every process (web, CLI, scheduler, tests) builds its
Service with `make_service`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.config import Settings, load_settings
from models.risk.rules import RulesError
from models.service import Service
from scheduler.notify import warnings as notify_warnings


def make_service(settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None,
                 background: bool = False) -> Service:
    """A Service whose early warnings speak through scheduler/notify/warnings.py; a rules file
    with a mistake stops it here, with the mistake in words (templates/errors/risk_rules.txt)."""
    service = Service(settings or load_settings(), clock=clock, background=background, notify=notify_warnings)
    try:
        service.rules()
    except RulesError as exc:
        raise RuntimeError(notify_warnings.rules_error_text(exc)) from exc
    return service
