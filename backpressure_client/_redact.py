"""Keep credentials out of logs, reprs and error messages."""

from __future__ import annotations

import re

__all__ = ["redact_text", "redact_url"]

# Query parameters whose name ends like a credential's (token, access_token,
# api_key, client_secret, ...).
_SECRET_PARAM = re.compile(
    r"(?i)([?&][^=&#\s]*(?:token|key|password|passwd|pwd|secret|auth|authorization"
    r"|credentials?|signature|sig)=)[^&#\s]*"
)
# Up to the *last* "@" of a URL: a password typed without percent-encoding may
# hold "@", "/", "?" or "#", and then a URL parser ends the user-info early and
# shows the rest of the password as host, path or query.  Masking too much of
# a URL that merely has "@" in its path is the safe mistake.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)\S*@")


def redact_url(url: str) -> str:
    """Return *url* with any user-info and secret-looking query values masked.

    ``http://user:pw@prom:9090/?token=abc`` becomes
    ``http://***@prom:9090/?token=***``.  Everything between ``://`` (or the
    start, without a scheme) and the last ``@`` counts as user-info, so a
    password with unescaped ``/``, ``?``, ``#``, ``@`` or spaces is masked
    whole.
    """
    scheme_end = url.find("://")
    # Without a scheme ("user:pw@prom:9090", a typo the config rejects and
    # then quotes back), everything before the last "@" is user-info too.
    start = scheme_end + 3 if scheme_end >= 0 else 0
    at = url.rfind("@", start)
    if at >= 0:
        url = f"{url[:start]}***{url[at:]}"
    return _SECRET_PARAM.sub(r"\1***", url)


def redact_text(text: str) -> str:
    """Mask URL user-info and secret query values wherever they occur in *text*."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))
