"""Credentials are masked in URLs and in free text."""

from __future__ import annotations

import pytest

from backpressure_client._redact import redact_text, redact_url

URLS = {
    "user and password": ("http://user:pw@prom:9090/", "http://***@prom:9090/"),
    "user only": ("https://token@prom.example", "https://***@prom.example"),
    "token parameter": ("http://prom/?token=abc", "http://prom/?token=***"),
    "several secret parameters": (
        "http://prom/?a=1&api_key=k&access_token=t&client_secret=s&b=2",
        "http://prom/?a=1&api_key=***&access_token=***&client_secret=***&b=2",
    ),
    "parameter names in any case": ("http://prom/?API_KEY=k#top", "http://prom/?API_KEY=***#top"),
    "both": (
        "http://user:pw@prom:9090/api/v1/query?token=abc",
        "http://***@prom:9090/api/v1/query?token=***",
    ),
    "'@' in the password": ("http://user:p@ss@prom:9090", "http://***@prom:9090"),
    "'/' in the password": ("http://user:p/ss@prom:9090/x", "http://***@prom:9090/x"),
    "'?' in the password": ("http://user:p?ss@prom", "http://***@prom"),
    "'#' in the password": ("http://user:p#ss@prom", "http://***@prom"),
    "space in the password": ("http://user:p ss@prom", "http://***@prom"),
    "no scheme": ("user:pw@prom:9090", "***@prom:9090"),
    "nothing secret": (
        "http://prometheus:9090/api/v1/query?query=up",
        "http://prometheus:9090/api/v1/query?query=up",
    ),
    "not a URL at all": ("prometheus", "prometheus"),
}


@pytest.mark.parametrize(("url", "shown"), URLS.values(), ids=URLS.keys())
def test_redact_url_masks_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_masks_too_much_rather_than_too_little() -> None:
    # An "@" in the path is indistinguishable from one in a mangled password.
    assert redact_url("http://prom/users/@me") == "http://***@me"


TEXTS = {
    "a URL in a sentence": (
        "GET http://user:pw@prom:9090/api failed",
        "GET http://***@prom:9090/api failed",
    ),
    "two URLs": (
        "from http://a:b@one/ to https://two/?token=t",
        "from http://***@one/ to https://two/?token=***",
    ),
    "a quoted URL": ("url='http://u:p/w@h'", "url='http://***@h'"),
    "an e-mail address is left alone": ("mail ops@example.com", "mail ops@example.com"),
    "a URL then an e-mail address": (
        "see http://prom/ or ops@example.com",
        "see http://prom/ or ops@example.com",
    ),
}


@pytest.mark.parametrize(("text", "shown"), TEXTS.values(), ids=TEXTS.keys())
def test_redact_text_masks_credentials_wherever_they_are(text: str, shown: str) -> None:
    assert redact_text(text) == shown
