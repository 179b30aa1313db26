"""The early warnings' values in words: notices, weekly bundles, evidence lines, escalation notes
(templates/push/warning_*.txt), each message within WeCom's byte limit.

This module is the `Notify` of models/risk/notices.py: bot/service.make_service hands it to the
Service (the check after a recording), the scheduler's jobs and the chat handlers (via their context).
"""

from __future__ import annotations

from functools import lru_cache

from core.render import fit, fit_items, render
from models.risk.matching import Evidence
from models.risk.notices import WarningBundle, WarningNotice
from models.risk.rules import RulesError
from wechat.wecom_api import MAX_TEXT_BYTES


def notice_text(notice: WarningNotice) -> str:
    """The body of one message (push/warning_<kind>.txt), within WeCom's byte limit."""
    return fit(render(f"push/warning_{notice.kind}.txt", w=notice.warning, event=notice.event,
                      handler=notice.handler, note=notice.note, false_alarm=notice.false_alarm,
                      days=notice.days, routed=notice.routed), MAX_TEXT_BYTES)


def bundle_text(bundle: WarningBundle) -> str:
    """A weekly bundle listing as many warnings as fit in one message (…另有 N 条)."""
    return fit_items("push/warning_bundle.txt", bundle.items, MAX_TEXT_BYTES, at_least=1, tail="…", cap=bundle.cap)


@lru_cache(maxsize=2048)  # a scan repeats the same lines (the same value, count and day) many times
def evidence_text(evidence: Evidence) -> str:
    """One line of evidence (push/warning_evidence_<kind>.txt)."""
    return render(f"push/warning_evidence_{evidence.kind}.txt", **evidence.values)


def escalation_note(days: int, sensitive: bool) -> str:
    """The note of an escalation event: how long it waited, to whom it went."""
    return render("push/warning_escalation_note.txt", days=days, sensitive=sensitive)


def rules_error_text(error: RulesError) -> str:
    """What is wrong with the rules file, for the IT person running the service."""
    return render("errors/risk_rules.txt", code=error.code, **error.values)
