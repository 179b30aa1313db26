"""Numbers typed in chat, checked before a query or a computation sees them.

`str.isdigit()` admits ² and 𐩀 (which `int()` refuses) and no length limit (a 50-digit id
overflows the database's integer); the checks here admit ASCII digits within range only.
"""

from __future__ import annotations

import re

# The largest id an INTEGER primary key holds (PostgreSQL's integer, the narrower of our two databases).
ROW_ID_MAX = 2**31 - 1
DIGITS = re.compile(r"[0-9]+")
SHOWN_LIMIT = 20  # characters of a bad token quoted back in a reply


def is_digits(text: str) -> bool:
    """Whether `text` is a whole number written in ASCII digits (any length)."""
    return DIGITS.fullmatch(text) is not None


def row_id(text: str) -> int | None:
    """The id a `#N` names (`#` and spaces stripped), or None when N is not 1–ROW_ID_MAX in ASCII digits."""
    text = text.strip().lstrip("#＃").strip()
    if not is_digits(text) or len(text) > len(str(ROW_ID_MAX)):
        return None
    number = int(text)
    return number if 1 <= number <= ROW_ID_MAX else None


def shown(token: str, limit: int = SHOWN_LIMIT) -> str:
    """A token as quoted back to the sender: cut short when it is long."""
    return token if len(token) <= limit else token[:limit] + "…"
