"""PromQL signals: an instant query against a Prometheus server.

A *boolean* query fires as an alerting rule would: while the instant query
returns a non-empty vector (whatever its sample values, NaN and ±Inf
included), or a scalar other than 0 (a NaN scalar, which is what
``scalar()`` returns for an empty vector, does not fire; ±Inf does).

A *graded* query (``warning=`` and ``emergency=`` given) must return exactly
one sample, a one-element vector or a scalar; its value sets the level with
:func:`~backpressure_client.graded_level`, and the signal fires at level 1.
Zero or several samples, or a NaN value, make the poll fail.

A range vector (matrix) or a string result makes the poll fail for both kinds.

The query goes to ``/api/v1/query`` through prometheus-api-client's
:class:`~prometheus_api_client.PrometheusConnect` configuration (its URL,
headers, auth and requests session: TLS verification, client certificate,
proxies, cookies), but it is sent without retries and with this signal's
timeout: a failed poll is handled by the failure policy at the next cadence,
never by blocking retries.  ``custom_query`` itself is not used because it
drops the result type (a scalar and a string look alike) and puts the response
body into its exception text.

The timeout bounds the whole poll, not each I/O step: the body is streamed
against a monotonic deadline (each read waits at most the time left) and may
not exceed :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from ._config import FailurePolicy, url_problem
from ._errors import ConfigError
from ._redact import redact_text, redact_url
from ._signals import (
    DEFAULT_TIMEOUT,
    Reading,
    SignalError,
    SignalErrorReason,
    describe_exception,
    graded_level,
    option_problems,
    threshold_problems,
)

if TYPE_CHECKING:
    from prometheus_api_client import PrometheusConnect

__all__ = ["PromQLSignal", "evaluate_query_response", "split_prometheus_url"]

_QUERY_PATH = "/api/v1/query"
_MAX_ERROR_TEXT = 200
#: An answer larger than this (bytes) is refused: a query result for a
#: backpressure decision is a few samples.
MAX_BODY_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024


def split_prometheus_url(url: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a Prometheus *url* into its base URL and its query parameters.

    The base has no trailing slash, no seed-style ``/api/v1/query`` suffix, no
    query string and no fragment; the parameters (``?token=...``) are to be
    sent with every query.  User-info stays in the base (requests sends it as
    basic auth).  The one place that parses a Prometheus URL.
    """
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if path.endswith(_QUERY_PATH):
        path = path[: -len(_QUERY_PATH)]
    base = urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))
    return base, parse_qsl(parts.query, keep_blank_values=True)


def _session_problem(prometheus: object) -> str | None:
    """What keeps this signal from sending through *prometheus*'s session, if anything."""
    if not isinstance(getattr(prometheus, "url", None), str):
        return (
            f"prometheus={type(prometheus).__name__}: must be a "
            "prometheus_api_client.PrometheusConnect"
        )
    # Private attributes of PrometheusConnect (checked against 0.5-0.7): the
    # signal sends its own request through them, without the client's retries.
    if not isinstance(getattr(prometheus, "_session", None), requests.Session):
        return (
            f"prometheus={type(prometheus).__name__}: has no requests session (_session); "
            "this prometheus_api_client version is not supported, pass url= instead"
        )
    if not isinstance(getattr(prometheus, "_method", "GET"), str):
        return (
            f"prometheus={type(prometheus).__name__}: its HTTP method (_method) is not a "
            "string; pass url= instead"
        )
    return None


class PromQLSignal:
    """A backpressure signal from a PromQL instant query.

    :param query: the PromQL expression, e.g.
        ``sum(rate(http_requests_total{code="429"}[1m])) > 0.5``.
    :param url: the Prometheus server, ``http://prometheus:9090`` or the
        seed's ``http://prometheus:9090/api/v1/query``.  User-info in it is
        sent as basic auth and never logged.
        Query parameters in it (``?token=...``) are sent with every query.
    :param prometheus: instead of *url*, a configured
        ``prometheus_api_client.PrometheusConnect`` whose URL, headers, auth,
        method and session settings (TLS verification, client certificate,
        proxies, cookies, default headers) are used.  Its retry policy is
        not, and neither are transport adapters mounted on its session
        (``session.mount(...)``): polls go through this signal's own adapter,
        which never retries.  It is not closed by this signal.
    :param name: the signal's name; default: the query text.
    :param warning: with *emergency*, makes the signal graded: the value at
        which the level starts rising above 0.
    :param emergency: the value at which the level reaches 1 (firing).
    :param curve: how steeply the level rises between the two (> 0, default 4).
    :param cadence: seconds between polls; ``None``: the limiter's
        ``monitoring_cadence``.
    :param timeout: seconds a query may take; ``None``: the limiter's
        ``query_timeout`` or its default.  It is also sent to Prometheus as
        the query's evaluation timeout.
    :param stale_after: seconds a good reading is kept while polls fail;
        ``None``: the limiter's ``stale_after`` or three cadences.
    :param failure_policy: ``"fail_open"`` / ``"fail_closed"``; ``None``: the
        limiter's.

    :raises ConfigError: naming every bad argument.
    """

    def __init__(
        self,
        query: str,
        *,
        url: str | None = None,
        prometheus: PrometheusConnect | None = None,
        name: str | None = None,
        warning: float | None = None,
        emergency: float | None = None,
        curve: float = 4.0,
        cadence: float | None = None,
        timeout: float | None = None,
        stale_after: float | None = None,
        failure_policy: FailurePolicy | None = None,
    ) -> None:
        problems: list[str] = []
        if not isinstance(query, str) or not query.strip():
            problems.append(f"query={query!r}: must be a non-empty PromQL expression")
        if (url is None) == (prometheus is None):
            problems.append("give the Prometheus server as url= or as prometheus=, not both")
        elif url is not None:
            problem = url_problem(url, "url")
            if problem:
                problems.append(problem)
        else:
            problem = _session_problem(prometheus)
            if problem:
                problems.append(problem)
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(f"name={name!r}: must be a non-empty string or None")
        problems.extend(threshold_problems(warning, emergency, curve))
        problems.extend(option_problems(cadence, timeout, stale_after, failure_policy))
        if problems:
            raise ConfigError(problems)
        self.query = query.strip()
        self.name: str = name if name is not None else " ".join(self.query.split())
        self.warning = warning
        self.emergency = emergency
        self.curve = float(curve)
        self.cadence = cadence
        self.timeout = timeout
        self.stale_after = stale_after
        self.failure_policy = failure_policy
        self._prometheus = prometheus
        self._url = url
        raw = url if url is not None else str(getattr(prometheus, "url", ""))
        self._base, self._url_params = split_prometheus_url(raw)
        self._bound_timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        self._lock = threading.Lock()
        self._connection: Any = None  # our own PrometheusConnect, made lazily
        self._adapter: HTTPAdapter | None = None
        self._closed = False

    @property
    def graded(self) -> bool:
        """Whether this is a graded signal (``warning`` and ``emergency`` set)."""
        return self.warning is not None

    def _bind_timeout(self, seconds: float) -> None:
        # Called by the supervisor with the timeout resolved from the
        # limiter's configuration.
        self._bound_timeout = float(seconds)

    def poll(self) -> Reading:
        """Run the query once and evaluate it.

        :raises SignalError: the query failed or its answer is unusable.
        """
        status, content_type, body = self._fetch()
        return evaluate_query_response(
            status,
            body,
            content_type=content_type,
            warning=self.warning,
            emergency=self.emergency,
            curve=self.curve,
            where=redact_url(self._base),
        )

    def _fetch(self) -> tuple[int, str, bytes]:
        timeout = self._bound_timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise SignalError("exception", "the signal is closed")
            prometheus, adapter = self._connect_locked()
        session: requests.Session = prometheus._session
        method = str(getattr(prometheus, "_method", "GET")).upper()
        # Whole milliseconds: what every Prometheus-compatible server parses.
        query = [("query", self.query), ("timeout", f"{max(1, round(timeout * 1000))}ms")]
        request = requests.Request(
            method,
            self._base + _QUERY_PATH,
            params=[*self._url_params, *query] if method == "GET" else self._url_params,
            data=query if method != "GET" else None,
            headers=getattr(prometheus, "headers", None),
            auth=getattr(prometheus, "auth", None),
        )
        where = redact_url(self._base)

        def timed_out(exc: BaseException | None = None) -> SignalError:
            cause = f" ({describe_exception(exc)})" if exc is not None else ""
            return SignalError("timeout", f"no answer from {where} within {timeout:.3g} s{cause}")

        try:
            prepared = session.prepare_request(request)
            settings = session.merge_environment_settings(
                prepared.url, {}, False, session.verify, session.cert
            )
            response = adapter.send(
                prepared,
                stream=True,
                timeout=(timeout, timeout),
                verify=settings["verify"] if settings["verify"] is not None else True,
                cert=settings["cert"],
                proxies=settings["proxies"],
            )
        except requests.Timeout as exc:
            raise timed_out(exc) from None
        except (requests.RequestException, OSError, ValueError) as exc:
            raise SignalError(
                "connection", f"cannot query {where}: {describe_exception(exc)}"
            ) from None
        try:
            body = _read_body(response, deadline, where)
        except (TimeoutError, urllib3.exceptions.TimeoutError) as exc:
            raise timed_out(exc) from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            if time.monotonic() >= deadline:
                raise timed_out(exc) from None
            raise SignalError(
                "connection", f"lost the answer from {where}: {describe_exception(exc)}"
            ) from None
        finally:
            response.close()
        if body is None:
            raise timed_out()
        return response.status_code, response.headers.get("Content-Type", ""), body

    def _connect_locked(self) -> tuple[Any, HTTPAdapter]:
        prometheus = self._prometheus
        if prometheus is None:
            if self._connection is None:
                from prometheus_api_client import PrometheusConnect

                connection = PrometheusConnect(url=self._base, timeout=self._bound_timeout)
                problem = _session_problem(connection)
                if problem:
                    connection.close()
                    raise SignalError("exception", problem)
                self._connection = connection
            prometheus = self._connection
        if self._adapter is None:
            # No retries: requests' own default (Retry(0, read=False)).
            self._adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1)
        return prometheus, self._adapter

    def close(self) -> None:
        """Release this signal's connections.  Idempotent.

        A ``PrometheusConnect`` passed in by the caller is left open.
        """
        with self._lock:
            self._closed = True
            adapter, self._adapter = self._adapter, None
            connection, self._connection = self._connection, None
        if adapter is not None:
            adapter.close()
        if connection is not None:
            connection.close()

    def __repr__(self) -> str:
        kind = f" graded [{self.warning}, {self.emergency}]" if self.graded else ""
        return f"<PromQLSignal {self.name!r}{kind} at {redact_url(self._base)}>"


def _read_body(response: requests.Response, deadline: float, where: str) -> bytes | None:
    """The body of a streamed *response*, or ``None`` when *deadline* passes first.

    Each read waits at most the time left (the socket timeout is lowered
    before every read), so a server that trickles its answer cannot hold the
    poll past the deadline.

    :raises SignalError: (``response``) the body exceeds :data:`MAX_BODY_BYTES`.
    """
    raw = response.raw
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(remaining)
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise SignalError(
                "response", f"the answer from {where} is larger than {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)


def evaluate_query_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "",
    warning: float | None = None,
    emergency: float | None = None,
    curve: float = 4.0,
    where: str = "Prometheus",
) -> Reading:
    """Turn an ``/api/v1/query`` answer into a reading (without a timestamp).

    :param status: the HTTP status code.
    :param body: the response body.
    :param warning: with *emergency*: evaluate as a graded query.
    :raises SignalError: the answer is an error or cannot be used.
    """
    doc: object
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and doc.get("status") == "error":
        error_type = str(doc.get("errorType", "error"))
        message = _clip(redact_text(str(doc.get("error", ""))))
        reason: SignalErrorReason = "timeout" if error_type in ("timeout", "canceled") else "query"
        raise SignalError(
            reason, f"{where} rejected the query (HTTP {status}, {error_type}): {message}"
        )
    if status != 200:
        kind = content_type.split(";", 1)[0].strip() or "no content type"
        raise SignalError("http", f"HTTP {status} from {where} ({kind}, {len(body)} bytes)")
    if doc is None:
        raise SignalError(
            "response",
            f"the answer from {where} is not valid JSON ({len(body)} bytes; truncated?)",
        )
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(data, dict):
        raise SignalError("response", f"the answer from {where} is not a Prometheus query result")
    result_type = data.get("resultType")
    result = data.get("result")
    values = _sample_values(result_type, result, where)
    if warning is not None and emergency is not None:
        if len(values) != 1:
            raise SignalError(
                "response",
                f"a graded query must return exactly one sample; {where} returned "
                f"{len(values)} (aggregate it, e.g. with max() or sum())",
            )
        value = values[0]
        if math.isnan(value):
            raise SignalError("response", "a graded query returned NaN")
        level = graded_level(value, warning, emergency, curve)
        return Reading(firing=level >= 1.0, level=level, value=value)
    if result_type == "scalar":
        value = values[0]
        if math.isnan(value):
            return Reading(firing=False, value=None)
        return Reading(firing=value != 0, value=value)
    numbers = [v for v in values if not math.isnan(v)]
    return Reading(firing=bool(values), value=max(numbers) if numbers else None)


def _sample_values(result_type: object, result: object, where: str) -> Sequence[float]:
    if result_type == "vector" and isinstance(result, list):
        out = []
        for sample in result:
            if not isinstance(sample, dict):
                break
            if "value" in sample:
                number = _number(sample["value"])
                if number is None:
                    break
                out.append(number)
            elif "histogram" in sample:  # a native histogram: present, but no single value
                out.append(math.nan)
            else:
                break
        else:
            return out
    elif result_type == "scalar":
        number = _number(result)
        if number is not None:
            return [number]
    elif result_type in ("matrix", "string"):
        hint = (
            " (a range selector such as [5m] needs a function such as rate() around it)"
            if result_type == "matrix"
            else ""
        )
        raise SignalError(
            "response",
            f"{where} returned a {result_type}; a backpressure query must return an instant "
            f"vector or a scalar{hint}",
        )
    raise SignalError(
        "response", f"the answer from {where} has a malformed {_clip(str(result_type))!s} result"
    )


def _number(pair: object) -> float | None:
    if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str):
        try:
            return float(pair[1])
        except ValueError:
            return None
    return None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."
