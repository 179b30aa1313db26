"""Every sentence a user reads lives in templates/; this renders them."""

from __future__ import annotations

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
