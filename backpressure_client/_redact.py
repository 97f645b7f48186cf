"""Keep credentials out of logs, reprs and error messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url"]

_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:access_token|token|api_key|apikey|key|password|secret|auth)=)[^&#\s]*"
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")


def redact_url(url: str) -> str:
    """Return *url* with any user-info and secret-looking query values masked.

    ``http://user:pw@prom:9090/?token=abc`` becomes
    ``http://***@prom:9090/?token=***``.  A value that does not parse as a URL
    is masked by the same textual rules.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = _SECRET_PARAM.sub(r"\1***", "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask URL user-info and secret query values wherever they occur in *text*."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))
