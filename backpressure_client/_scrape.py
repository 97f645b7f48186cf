"""Direct-scrape signals: read a service's ``/metrics`` page, no Prometheus needed.

The page (Prometheus text format, or OpenMetrics when the server insists) is
parsed with ``prometheus_client``'s parser; the samples named *metric* whose
labels match are aggregated (``sum``, ``max``, ``min``, ``avg`` or
``count``; NaN samples are skipped) and the aggregate is compared with a
threshold (boolean) or placed between ``warning`` and ``emergency`` (graded).

When the metric exists but no sample matches the labels, ``sum`` and
``count`` give 0 and the others give no value, which never fires (level 0).
A metric missing from the page altogether is an error: it is usually a typo
or the wrong URL.

The timeout bounds the whole scrape, not each I/O step: the page is streamed
against a monotonic deadline, and a watchdog shuts the connection down when
the deadline passes mid-body, so a server that trickles its page cannot hold
the poll longer.  A page larger than :data:`MAX_BYTES` is refused.
"""

from __future__ import annotations

import contextlib
import math
import operator
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import httpx
from prometheus_client.metrics_core import Metric

from ._config import FailurePolicy, url_problem
from ._errors import ConfigError
from ._redact import redact_url
from ._signals import (
    DEFAULT_TIMEOUT,
    Reading,
    SignalError,
    describe_exception,
    graded_level,
    option_problems,
    threshold_problems,
)

__all__ = ["Aggregate", "Comparison", "ScrapeSignal", "evaluate_exposition"]

#: How matching samples are combined into one value.
Aggregate = Literal["sum", "max", "min", "avg", "count"]
#: How the aggregate is compared with the threshold.
Comparison = Literal[">", ">=", "<", "<=", "==", "!="]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_AGGREGATES = ("sum", "max", "min", "avg", "count")
_ACCEPT = "text/plain;version=0.0.4;q=1.0, application/openmetrics-text;q=0.5, */*;q=0.1"
#: A /metrics page larger than this (bytes) is refused.
MAX_BYTES = 16 * 1024 * 1024
_COUNTER_SUFFIXES = ("_total", "_created")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_gcount", "_gsum")

LabelMatchers = Mapping[str, "str | re.Pattern[str]"]


class ScrapeSignal:
    """A backpressure signal read straight from a ``/metrics`` endpoint.

    :param url: the exposition's URL, e.g. ``http://backend:8000/metrics``.
    :param metric: the sample name, as the page shows it (counters end in
        ``_total``).
    :param labels: label matchers: a string matches exactly, a compiled
        ``re.Pattern`` must match the whole label value.
    :param aggregate: ``sum`` (default), ``max``, ``min``, ``avg`` or ``count``
        over the matching samples.
    :param op: ``>`` (default), ``>=``, ``<``, ``<=``, ``==`` or ``!=``.
    :param threshold: a boolean signal fires while ``aggregate op threshold``.
    :param warning: instead of *threshold*, with *emergency*: a graded signal;
        see :func:`~backpressure_client.graded_level`.
    :param emergency: the value at which the level reaches 1 (firing).
    :param curve: how steeply the level rises (> 0, default 4).
    :param name: the signal's name; default: a PromQL-like rendering such as
        ``sum(queue_depth{queue="jobs"}) > 100``.
    :param headers: extra request headers (e.g. ``Authorization``).
    :param verify: TLS verification, as httpx takes it.
    :param cadence: seconds between polls; ``None``: the limiter's.
    :param timeout: seconds a scrape may take; ``None``: the limiter's.
    :param stale_after: seconds a good reading is kept while scrapes fail.
    :param failure_policy: ``"fail_open"`` / ``"fail_closed"``; ``None``: the limiter's.

    :raises ConfigError: naming every bad argument.
    """

    def __init__(
        self,
        url: str,
        metric: str,
        *,
        labels: LabelMatchers | None = None,
        aggregate: Aggregate = "sum",
        op: Comparison = ">",
        threshold: float | None = None,
        warning: float | None = None,
        emergency: float | None = None,
        curve: float = 4.0,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        cadence: float | None = None,
        timeout: float | None = None,
        stale_after: float | None = None,
        failure_policy: FailurePolicy | None = None,
    ) -> None:
        problems: list[str] = []
        problem = url_problem(url, "url")
        if problem:
            problems.append(problem)
        if not isinstance(metric, str) or not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", metric):
            problems.append(f"metric={metric!r}: must be a metric name such as queue_depth")
        matchers = dict(labels or {})
        for key, value in matchers.items():
            if not isinstance(key, str) or not isinstance(value, (str, re.Pattern)):
                problems.append(
                    f"labels[{key!r}]={value!r}: must map a label name to a string "
                    "or a compiled re.Pattern"
                )
        if aggregate not in _AGGREGATES:
            problems.append(f"aggregate={aggregate!r}: must be one of {', '.join(_AGGREGATES)}")
        if op not in _OPS:
            problems.append(f"op={op!r}: must be one of {' '.join(_OPS)}")
        graded = warning is not None or emergency is not None
        if graded and threshold is not None:
            problems.append(
                "give threshold= (boolean signal) or warning= and emergency= (graded), not both"
            )
        elif not graded and threshold is None:
            problems.append(
                "threshold=None: give threshold= (boolean signal) or warning= and "
                "emergency= (graded signal)"
            )
        elif threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or math.isnan(threshold)
        ):
            problems.append(f"threshold={threshold!r}: must be a number")
        problems.extend(threshold_problems(warning, emergency, curve))
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(f"name={name!r}: must be a non-empty string or None")
        problems.extend(option_problems(cadence, timeout, stale_after, failure_policy))
        if problems:
            raise ConfigError(problems)
        self.url = url
        self.metric = metric
        self.labels: dict[str, str | re.Pattern[str]] = matchers
        self.aggregate: Aggregate = aggregate
        self.op: Comparison = op
        self.threshold = threshold
        self.warning = warning
        self.emergency = emergency
        self.curve = float(curve)
        self.cadence = cadence
        self.timeout = timeout
        self.stale_after = stale_after
        self.failure_policy = failure_policy
        self.name: str = name if name is not None else self._default_name()
        self._headers = {"Accept": _ACCEPT, **dict(headers or {})}
        self._verify = verify
        self._bound_timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._closed = False

    @property
    def graded(self) -> bool:
        """Whether this is a graded signal (``warning`` and ``emergency`` set)."""
        return self.warning is not None

    def _default_name(self) -> str:
        selector = ",".join(
            f'{k}=~"{v.pattern}"' if isinstance(v, re.Pattern) else f'{k}="{v}"'
            for k, v in self.labels.items()
        )
        expr = (
            f"{self.aggregate}({self.metric}{{{selector}}})"
            if selector
            else (f"{self.aggregate}({self.metric})")
        )
        if self.graded:
            return f"{expr} graded [{self.warning:g}, {self.emergency:g}]"
        return f"{expr} {self.op} {self.threshold:g}"

    def _bind_timeout(self, seconds: float) -> None:
        self._bound_timeout = float(seconds)

    def poll(self) -> Reading:
        """Scrape the page once and evaluate it.

        :raises SignalError: the scrape failed or the page is unusable.
        """
        content_type, text = self._fetch()
        return evaluate_exposition(
            text,
            self.metric,
            labels=self.labels,
            aggregate=self.aggregate,
            op=self.op,
            threshold=self.threshold,
            warning=self.warning,
            emergency=self.emergency,
            curve=self.curve,
            openmetrics=content_type.startswith("application/openmetrics-text"),
            where=redact_url(self.url),
        )

    def _fetch(self) -> tuple[str, str]:
        with self._lock:
            if self._closed:
                raise SignalError("exception", "the signal is closed")
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers,
                    verify=self._verify,
                    timeout=self._bound_timeout,
                    follow_redirects=False,
                )
            client = self._client
        where = redact_url(self.url)
        timeout = self._bound_timeout
        deadline = time.monotonic() + timeout

        def timed_out(exc: BaseException | None = None) -> SignalError:
            cause = f" ({describe_exception(exc)})" if exc is not None else ""
            return SignalError("timeout", f"no answer from {where} within {timeout:.3g} s{cause}")

        watchdog: threading.Timer | None = None
        try:
            with client.stream("GET", self.url, timeout=timeout) as response:
                if response.status_code != 200:
                    kind = response.headers.get("Content-Type", "").split(";", 1)[0]
                    raise SignalError(
                        "http",
                        f"HTTP {response.status_code} from {where} ({kind or 'no content type'})",
                    )
                # httpx times each read on its own; the watchdog ends a body
                # that trickles in past the deadline.
                watchdog = _watchdog(response, deadline - time.monotonic(), self.name)
                chunks = []
                size = 0
                for chunk in response.iter_bytes():
                    if time.monotonic() >= deadline:
                        raise timed_out()
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise SignalError(
                            "response", f"the page at {where} is larger than {MAX_BYTES} bytes"
                        )
                    chunks.append(chunk)
                content_type = response.headers.get("Content-Type", "")
                encoding = response.charset_encoding or "utf-8"
        except httpx.TimeoutException as exc:
            raise timed_out(exc) from None
        except httpx.HTTPError as exc:
            if time.monotonic() >= deadline:
                raise timed_out(exc) from None
            raise SignalError(
                "connection", f"cannot scrape {where}: {describe_exception(exc)}"
            ) from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if time.monotonic() >= deadline:
            raise timed_out()
        try:
            text = b"".join(chunks).decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise SignalError("response", f"the page at {where} is not valid text") from None
        return content_type, text

    def close(self) -> None:
        """Close the HTTP client.  Idempotent."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<ScrapeSignal {self.name!r} at {redact_url(self.url)}>"


def _watchdog(response: httpx.Response, seconds: float, name: str) -> threading.Timer | None:
    """Shut *response*'s connection down after *seconds*, unless cancelled first."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if not isinstance(sock, socket.socket):
        return None

    def shut() -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, seconds), shut)
    timer.name = f"backpressure-deadline[{name}]"[:120]
    timer.daemon = True
    timer.start()
    return timer


def evaluate_exposition(
    text: str,
    metric: str,
    *,
    labels: LabelMatchers | None = None,
    aggregate: Aggregate = "sum",
    op: Comparison = ">",
    threshold: float | None = None,
    warning: float | None = None,
    emergency: float | None = None,
    curve: float = 4.0,
    openmetrics: bool = False,
    where: str = "the page",
) -> Reading:
    """Evaluate a scrape condition against an exposition *text* (no timestamp).

    :raises SignalError: (``response``) the text does not parse, or has no
        metric named *metric*.
    """
    families = _parse(text, openmetrics, where)
    matchers = dict(labels or {})
    known = False
    values: list[float] = []
    for family in families:
        counter_alias = family.type == "counter" and family.name == metric
        # A labelled metric with no children yet shows its HELP/TYPE lines only.
        known = known or _declares(family, metric)
        for sample in family.samples:
            if sample.name != metric and not (counter_alias and sample.name == metric + "_total"):
                continue
            known = True
            if _matches(sample.labels, matchers) and not math.isnan(sample.value):
                values.append(sample.value)
    if not known:
        raise SignalError("response", f"no metric named {metric!r} on {where}")
    value = _aggregate(aggregate, values)
    if warning is not None and emergency is not None:
        if value is None:
            return Reading(firing=False, level=0.0, value=None)
        level = graded_level(value, warning, emergency, curve)
        return Reading(firing=level >= 1.0, level=level, value=value)
    assert threshold is not None
    firing = value is not None and _OPS[op](value, threshold)
    return Reading(firing=firing, value=value)


def _parse(text: str, openmetrics: bool, where: str) -> list[Metric]:
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    try:
        return list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
    except Exception as exc:  # the parsers raise ValueError, IndexError, KeyError...
        raise SignalError(
            "response", f"cannot parse the metrics page at {where}: {describe_exception(exc)}"
        ) from None


def _declares(family: Metric, metric: str) -> bool:
    """Whether *family* declares samples named *metric* (it may have none yet)."""
    name = family.name
    if metric == name:
        return True
    if not metric.startswith(name):
        return False
    suffix = metric[len(name) :]
    if family.type == "counter":
        return suffix in _COUNTER_SUFFIXES
    if family.type in ("histogram", "gaugehistogram", "summary"):
        return suffix in _HISTOGRAM_SUFFIXES
    return family.type == "info" and suffix == "_info"


def _matches(labels: Mapping[str, str], matchers: Mapping[str, str | re.Pattern[str]]) -> bool:
    for key, want in matchers.items():
        have = labels.get(key, "")
        if isinstance(want, re.Pattern):
            if not want.fullmatch(have):
                return False
        elif have != want:
            return False
    return True


def _aggregate(how: Aggregate, values: Iterable[float]) -> float | None:
    values = list(values)
    if how == "count":
        return float(len(values))
    if how == "sum":
        return float(sum(values))
    if not values:
        return None
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) / len(values)
