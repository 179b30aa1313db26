"""Every sentence a user reads lives in templates/; this renders them."""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from functools import lru_cache

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from core.config import ROOT

# The templates rendered for the message being handled, when the pipeline asks (it tells from them
# whether the answer was a refusal or a bad-input reply, for its log line and the metrics).
rendered: ContextVar[list[str] | None] = ContextVar("rendered", default=None)


def _signed(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment over templates/ (plain text: no autoescape)."""
    env = Environment(
        loader=FileSystemLoader(ROOT / "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        undefined=StrictUndefined,
        autoescape=False,
        auto_reload=False,  # templates are read once per process: no stat of the file at every render
    )
    env.filters["signed"] = _signed
    env.filters["num"] = _num
    return env


def render(template: str, /, **context: object) -> str:
    """Render templates/<template> and trim the surrounding blank space."""
    seen = rendered.get()
    if seen is not None:
        seen.append(template)
    return environment().get_template(template).render(**context).strip()


def fit(text: str, limit: int) -> str:
    """Cut a message to `limit` UTF-8 bytes on a character boundary, ending it with "…" when cut."""
    return cut_to_bytes(text, limit, "…")


# ── messages within a byte limit (the channel's: WeCom's is wechat.wecom_api.MAX_TEXT_BYTES) ──

def utf8_size(text: str) -> int:
    """The size of `text` in UTF-8 bytes, what message limits count."""
    return len(text.encode("utf-8"))


def cut_to_bytes(text: str, limit: int, tail: str = "") -> str:
    """`text` if it fits in `limit` UTF-8 bytes, else its longest start (whole characters) that
    fits with `tail` after it."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit - utf8_size(tail)].decode("utf-8", errors="ignore") + tail


def fit_items(template: str, items: Sequence[object], limit: int, /, *, at_least: int = 0,
              at_most: int | None = None, tail: str = "", **context: object) -> str:
    """A template of a list (it renders `items` and says how many `more` were left out) within
    `limit` bytes: with as many items as fit, at least `at_least` and at most `at_most`, cut (ending
    with `tail`) if even those do not fit. One item fewer is always shorter, so the most that fit
    are found by halving."""
    def attempt(n: int) -> str:
        return render(template, items=list(items[:n]), more=len(items) - n, **context)

    most = len(items) if at_most is None else min(len(items), at_most)
    body = attempt(most)
    if utf8_size(body) <= limit or most <= at_least:
        return cut_to_bytes(body, limit, tail)
    low, high = at_least, most - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if utf8_size(attempt(mid)) <= limit else (low, mid - 1)
    return cut_to_bytes(attempt(low), limit, tail)


def fit_ending(text: str, last_line: str, limit: int, tail: str = "…") -> str:
    """`text` then `last_line` (e.g. a link) on a line of its own, within `limit` bytes: to make room,
    the text loses its last lines (a line `tail` says so; a single line too long is cut), the last
    line is never cut."""
    whole = f"{text}\n{last_line}"
    if utf8_size(whole) <= limit:
        return whole
    room = limit - utf8_size(f"\n{tail}\n{last_line}")
    kept = cut_to_bytes(text, room)
    if text[len(kept)] != "\n" and "\n" in kept:  # a line cut in two: drop its start
        kept = kept[:kept.rindex("\n")]
    return f"{kept}\n{tail}\n{last_line}"


def _cut(text: str, limit: int, tail_template: str | None) -> str:
    """`text` cut to `limit` bytes, ending with a line `tail_template` renders (rendered only when cut)."""
    if utf8_size(text) <= limit:
        return text
    return cut_to_bytes(text, limit, "\n" + render(tail_template) if tail_template else "")


def fit_sections(template: str, sections: Sequence[str], limit: int, tail_template: str | None = None,
                 /, **context: object) -> str:
    """A template of sections (it renders `sections`, and says so when `dropped`) as one message
    within `limit` bytes: with all its sections, else without the last ones, else its first alone, cut."""
    for n in range(len(sections), 0, -1):
        body = render(template, sections=list(sections[:n]), dropped=n < len(sections), **context)
        if utf8_size(body) <= limit:
            return body
    return _cut(body, limit, tail_template)


def split_sections(template: str, sections: Sequence[str], limit: int, tail_template: str | None = None,
                   /, **context: object) -> list[str]:
    """A template of sections as one message within `limit` bytes, else as numbered parts (it shows
    `part` of `parts`), sections packed greedily in order, each part within `limit` (a part still
    too long, cut)."""
    def attempt(chosen: Sequence[str], part: int = 0, parts: int = 0) -> str:
        return render(template, sections=list(chosen), part=part, parts=parts, **context)

    whole = attempt(sections)
    if utf8_size(whole) <= limit:
        return [whole]
    groups: list[list[str]] = []
    current: list[str] = []
    for section in sections:  # labelled with the widest part numbers while packing
        if current and utf8_size(attempt([*current, section], 9, 9)) > limit:
            groups.append(current)
            current = []
        current.append(section)
    groups.append(current)
    return [_cut(attempt(g, i, len(groups)), limit, tail_template) for i, g in enumerate(groups, start=1)]
