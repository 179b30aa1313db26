"""What a log line or a stored job result may say about a failure: which exception, where, and the
error code, never its message.

An exception's message can quote what it was given: a SQL statement's parameters (message text,
names, values), the key a dict did not hold, the bytes that would not decode. So failures are told
by type, code and frames; the data stays in the database (PRODUCT.md §6, privacy in operation).
"""

from __future__ import annotations

import logging
import traceback


def error_code(exc: BaseException) -> str:
    """The exception's type and, where one exists, its code: `DataError/22003` (the database's
    SQLSTATE, or SQLite's error name), `WeComAPIError/45009` (WeCom's errcode), else just `KeyError`."""
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)  # SQLAlchemy's wrapper of the driver's error
    for source in (orig, exc):
        code = (getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
                or getattr(source, "sqlite_errorname", None))
        if code:
            return f"{name}/{code}"
    errcode = getattr(exc, "errcode", None)
    return f"{name}/{errcode}" if isinstance(errcode, int | str) and errcode != "" else name


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it came from, oldest first (as Python prints them)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain[::-1]


def safe_traceback(exc: BaseException) -> str:
    """A traceback with its frames and source lines, each exception shown by `error_code` only."""
    lines: list[str] = []
    for link in _chain(exc):
        if lines:
            lines.append("  (while handling the above, or caused by it:)")
        lines.append("Traceback (most recent call last; exception messages withheld):")
        for frame in traceback.extract_tb(link.__traceback__):
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
            if frame.line:
                lines.append(f"    {frame.line}")
        lines.append(error_code(link))
    return "\n".join(lines)


def log_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    """Log a failure at ERROR: `what` (keys and counts only), the error code, the safe traceback."""
    log.error("%s: %s\n%s", what, error_code(exc), safe_traceback(exc))
