"""Bearer links out of access logs: `/export/<token>` and a `t=`, `token=`, `code=` or `state=` query
parameter are written as [redacted] (PRODUCT.md §6). A link's token opens a workbook or a page for
whoever holds it; an OAuth callback's code and state sign someone in.

Imports nothing of the service: gunicorn.conf.py loads this file by path in gunicorn's master,
which must not import the app (the workers import it after they fork and gevent patches them).
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
_EXPORT = re.compile(r"(/export/)[^/?#\s\"]+")
# At the start of a bare query string (gunicorn's %(q)s) or after ? & ; in a URL.
_QUERY = re.compile(r"((?:^|(?<=[?&;]))(?:t|token|code|state)=)[^&;#\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a request line, a path, a query string, a referrer) with bearer tokens replaced."""
    if "/export/" in text:
        text = _EXPORT.sub(r"\g<1>" + REDACTED, text)
    if "=" in text:
        text = _QUERY.sub(r"\g<1>" + REDACTED, text)
    return text
