"""Prometheus as the signals see it: scraped samples, ``rate()``, instant queries.

Three lags stack up between the service's state and a signal reading, and
each is modelled as Prometheus has it:

* **scrape interval**: counters are sampled only at scrape times, so the
  newest data a query sees is up to one interval old;
* **``rate()`` window**: a rate over ``[w]`` is the increase between the
  first and the last sample inside ``(now - w, now]`` divided by their time
  distance (Prometheus extrapolates both to the window's edges, which leaves
  the ratio unchanged); fewer than two samples give no result, which does not
  fire.  A burst of errors therefore keeps a rate above its threshold for up
  to a whole window after it ends;
* **query cadence**: each client evaluates its queries once per cadence, on
  whatever has been scraped by then, and the reading stands until the next.

Queries fire with alerting-rule semantics: a comparison that holds fires; no
data or NaN does not.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ._service import DEFAULT_BUCKETS, Snapshot

__all__ = [
    "ErrorRateSignal",
    "LatencySignal",
    "MonitoringParams",
    "Prometheus",
    "Signal",
    "histogram_quantile",
]


@dataclass(frozen=True)
class MonitoringParams:
    """How the service is watched and how often clients ask.

    :param scrape_interval: seconds between two scrapes of the service.
    :param scrape_offset: seconds after the start of the first scrape (its
        phase relative to the clients' polls, which start at 0).
    :param rate_window: the ``[range]`` of ``rate()`` in the queries, in seconds.
    :param cadence: seconds between two evaluations of a client's queries.
    :param error_rate_threshold: the error-rate query fires above this many
        429/503 responses per second (the seed design's example: 0.5).
    :param latency_quantile: the quantile of the latency query.
    :param latency_threshold: the latency query fires above this many seconds.
    """

    scrape_interval: float = 15.0
    scrape_offset: float = 5.0
    rate_window: float = 60.0
    cadence: float = 15.0
    error_rate_threshold: float = 0.5
    latency_quantile: float = 0.95
    latency_threshold: float = 0.5


class Prometheus:
    """A time series store holding the service's scrapes.

    :param retention: seconds of samples kept (at least the longest range).
    """

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.samples: deque[tuple[float, Snapshot]] = deque()

    def scrape(self, now: float, snapshot: Snapshot) -> None:
        """Store one scrape taken at *now*."""
        self.samples.append((now, snapshot))
        horizon = now - self.retention
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()

    def range(self, now: float, window: float) -> list[tuple[float, Snapshot]]:
        """The samples with a timestamp in ``(now - window, now]``."""
        lo = now - window
        return [s for s in self.samples if lo < s[0] <= now]

    def rate(self, now: float, window: float, index: int) -> float | None:
        """``rate(series[window])`` of the counter at *index* of a snapshot, per second."""
        samples = self.range(now, window)
        if len(samples) < 2:
            return None
        (t0, first), (t1, last) = samples[0], samples[-1]
        return (last[index] - first[index]) / (t1 - t0)

    def bucket_rates(self, now: float, window: float) -> list[float] | None:
        """``rate()`` of every cumulative duration bucket (the last is +Inf)."""
        samples = self.range(now, window)
        if len(samples) < 2:
            return None
        (t0, first), (t1, last) = samples[0], samples[-1]
        span = t1 - t0
        n = len(DEFAULT_BUCKETS) + 1
        return [(last[2 + i] - first[2 + i]) / span for i in range(n)]


def histogram_quantile(q: float, bounds: tuple[float, ...], cumulative: list[float]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative bucket values.

    *cumulative* has one value per bound plus the +Inf bucket last.  Linear
    interpolation inside the bucket holding the rank; a rank in the +Inf
    bucket returns the highest finite bound; no observations return NaN.
    """
    total = cumulative[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound = 0.0
    lower_count = 0.0
    for bound, count in zip(bounds, cumulative[:-1], strict=True):
        if count >= rank:
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return bounds[-1]


class Signal:
    """A boolean query evaluated on :class:`Prometheus` (base class)."""

    #: the name the limiter shows for it.
    name = "signal"

    def promql(self) -> str:
        """The PromQL this signal stands for (for the report)."""
        raise NotImplementedError

    def firing(self, prometheus: Prometheus, now: float) -> bool:
        """Whether the query returns a result at *now*."""
        raise NotImplementedError


class ErrorRateSignal(Signal):
    """``sum(rate(http_server_requests_total{code=~"429|503"}[w])) > threshold``."""

    name = "errors"

    def __init__(self, window: float, threshold: float) -> None:
        self.window = window
        self.threshold = threshold

    def promql(self) -> str:
        """The query, with its window and threshold."""
        return (
            f'sum(rate(http_server_requests_total{{code=~"429|503"}}[{_duration(self.window)}]))'
            f" > {self.threshold:g}"
        )

    def firing(self, prometheus: Prometheus, now: float) -> bool:
        """Whether the error rate is above the threshold."""
        value = prometheus.rate(now, self.window, 1)
        return value is not None and value > self.threshold


class LatencySignal(Signal):
    """``histogram_quantile(q, sum by (le) (rate(..._bucket[w]))) > threshold``."""

    name = "latency"

    def __init__(self, window: float, quantile: float, threshold: float) -> None:
        self.window = window
        self.quantile = quantile
        self.threshold = threshold

    def promql(self) -> str:
        """The query, with its quantile, window and threshold."""
        return (
            f"histogram_quantile({self.quantile:g}, sum by (le) "
            f"(rate(http_server_request_duration_seconds_bucket[{_duration(self.window)}])))"
            f" > {self.threshold:g}"
        )

    def firing(self, prometheus: Prometheus, now: float) -> bool:
        """Whether the latency quantile is above the threshold."""
        rates = prometheus.bucket_rates(now, self.window)
        if rates is None:
            return False
        value = histogram_quantile(self.quantile, DEFAULT_BUCKETS, rates)
        return not math.isnan(value) and value > self.threshold


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
