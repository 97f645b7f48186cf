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
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from ._config import FailurePolicy, url_problem
from ._errors import ConfigError
from ._redact import redact_text, redact_url
from ._signals import (
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

__all__ = ["PromQLSignal", "evaluate_query_response"]

_QUERY_PATH = "/api/v1/query"
_DEFAULT_TIMEOUT = 10.0
_MAX_ERROR_TEXT = 200


def prometheus_base_url(url: str) -> str:
    """*url* without a trailing slash or a seed-style ``/api/v1/query`` suffix."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if path.endswith(_QUERY_PATH):
        path = path[: -len(_QUERY_PATH)]
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class PromQLSignal:
    """A backpressure signal from a PromQL instant query.

    :param query: the PromQL expression, e.g.
        ``sum(rate(http_requests_total{code="429"}[1m])) > 0.5``.
    :param url: the Prometheus server, ``http://prometheus:9090`` or the
        seed's ``http://prometheus:9090/api/v1/query``.  User-info in it is
        sent as basic auth and never logged.
    :param prometheus: instead of *url*, a configured
        ``prometheus_api_client.PrometheusConnect`` whose URL, headers, auth
        and session settings (TLS, proxies) are used.  Its retry policy is
        not: polls are never retried.  It is not closed by this signal.
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
        elif not isinstance(getattr(prometheus, "url", None), str):
            problems.append(
                f"prometheus={type(prometheus).__name__}: must be a "
                "prometheus_api_client.PrometheusConnect"
            )
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
        self._base = prometheus_base_url(raw)
        self._bound_timeout = timeout if timeout is not None else _DEFAULT_TIMEOUT
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
        with self._lock:
            if self._closed:
                raise SignalError("exception", "the signal is closed")
            prometheus, adapter = self._connect_locked()
        session: requests.Session = prometheus._session
        method = str(getattr(prometheus, "_method", "GET")).upper()
        timeout = self._bound_timeout
        # Whole milliseconds: what every Prometheus-compatible server parses.
        params = {"query": self.query, "timeout": f"{max(1, round(timeout * 1000))}ms"}
        request = requests.Request(
            method,
            self._base + _QUERY_PATH,
            params=params if method == "GET" else None,
            data=params if method != "GET" else None,
            headers=getattr(prometheus, "headers", None),
            auth=getattr(prometheus, "auth", None),
        )
        where = redact_url(self._base)
        try:
            prepared = session.prepare_request(request)
            settings = session.merge_environment_settings(
                prepared.url, {}, False, session.verify, session.cert
            )
            response = adapter.send(
                prepared,
                stream=False,
                timeout=(timeout, timeout),
                verify=settings["verify"] if settings["verify"] is not None else True,
                cert=settings["cert"],
                proxies=settings["proxies"],
            )
        except requests.Timeout as exc:
            raise SignalError(
                "timeout",
                f"no answer from {where} within {timeout:.3g} s ({describe_exception(exc)})",
            ) from None
        except (requests.RequestException, OSError, ValueError) as exc:
            raise SignalError(
                "connection", f"cannot query {where}: {describe_exception(exc)}"
            ) from None
        try:
            body = response.content
        except requests.RequestException as exc:
            raise SignalError(
                "connection", f"lost the answer from {where}: {describe_exception(exc)}"
            ) from None
        finally:
            response.close()
        return response.status_code, response.headers.get("Content-Type", ""), body

    def _connect_locked(self) -> tuple[Any, HTTPAdapter]:
        prometheus = self._prometheus
        if prometheus is None:
            if self._connection is None:
                from prometheus_api_client import PrometheusConnect

                self._connection = PrometheusConnect(url=self._base, timeout=self._bound_timeout)
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
