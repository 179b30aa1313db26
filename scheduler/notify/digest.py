"""The weekly digest's values (models/digest/summary.py) turned into the Monday push: WeCom markdown,
one message or numbered parts within WeCom's byte limit; and as plain text, the answer to a 本周概况
that had to wait. The words are templates/digest/; 本周概况 in chat renders the same plain text."""

from __future__ import annotations

from core.render import fit_sections, split_sections
from models.digest.summary import SECTIONS
from wechat.wecom_api import MAX_TEXT_BYTES


def weekly_markdown(context: dict, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """The digest as WeCom markdown: one message, or numbered parts each within `limit` bytes."""
    return split_sections("digest/weekly.md", SECTIONS, limit, "digest/cut.txt", **context)


def weekly_text(context: dict, limit: int = MAX_TEXT_BYTES) -> str:
    """The digest as plain text: one message, its last sections dropped to fit `limit` bytes."""
    return fit_sections("digest/weekly.txt", SECTIONS, limit, "digest/cut.txt", **context)
