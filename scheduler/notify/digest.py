"""The weekly digest's values (models/digest/summary.py) turned into the Monday push: WeCom markdown,
one message or numbered parts within WeCom's byte limit; and as plain text, the answer to a 本周概况
that had to wait. The words are templates/digest/; 本周概况 in chat renders the same plain text.

With a `link` (the dashboard's address, signed for the recipient), the message ends with it — the
last part, when the digest is split — and the sections are fitted into the bytes it leaves, so the
link is never cut."""

from __future__ import annotations

from core.render import fit_sections, render, split_sections, utf8_size
from models.digest.summary import SECTIONS
from wechat.wecom_api import MAX_TEXT_BYTES


def _link_line(template: str, link: str | None) -> str:
    return render(template, url=link) if link else ""


def weekly_markdown(context: dict, limit: int = MAX_TEXT_BYTES, link: str | None = None) -> list[str]:
    """The digest as WeCom markdown: one message, or numbered parts each within `limit` bytes; with
    `link`, the last part ends with `[查看图表](link)`."""
    line = _link_line("digest/link.md", link)
    room = limit - (utf8_size(line) + 2 if line else 0)
    parts = split_sections("digest/weekly.md", SECTIONS, room, "digest/cut.txt", **context)
    if line:
        parts[-1] = f"{parts[-1]}\n\n{line}"
    return parts


def weekly_text(context: dict, limit: int = MAX_TEXT_BYTES, link: str | None = None) -> str:
    """The digest as plain text: one message, its last sections dropped to fit `limit` bytes; with
    `link`, ending with a line that links to the dashboard."""
    line = _link_line("digest/link.txt", link)
    room = limit - (utf8_size(line) + 1 if line else 0)
    text = fit_sections("digest/weekly.txt", SECTIONS, room, "digest/cut.txt", **context)
    return f"{text}\n{line}" if line else text
