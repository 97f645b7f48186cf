"""The limiter's own metrics, for prometheus_client.

One collector per registry exposes every limiter registered into it,
labelled ``limiter="<name>"``.  The values are read from
:meth:`Backpressure.stats` and the signals' snapshots at scrape time: the
request path never touches prometheus_client.

The collector holds limiters weakly: a limiter that is garbage-collected, or
closed, is no longer exported, so short-lived limiters (tests, batch jobs)
leave nothing behind.  Names are unique per registry: when a limiter is
registered under the name of another live, open limiter, the newer one is
exported and the older one no longer is (a warning is logged).  Give each
limiter its own ``name=``, or pass ``registry=None`` to export nothing.

=============================================================  =========  =======================
metric                                                         type       labels
=============================================================  =========  =======================
``backpressure_client_enabled``                                gauge      limiter
``backpressure_client_window``                                 gauge      limiter
``backpressure_client_window_min``                             gauge      limiter
``backpressure_client_window_max``                             gauge      limiter
``backpressure_client_window_cap``                             gauge      limiter
``backpressure_client_in_flight``                              gauge      limiter
``backpressure_client_waiting``                                gauge      limiter
``backpressure_client_level``                                  gauge      limiter
``backpressure_client_admissions_total``                       counter    limiter, decision
``backpressure_client_completions_total``                      counter    limiter, outcome
``backpressure_client_window_increases_total``                 counter    limiter
``backpressure_client_window_decreases_total``                 counter    limiter
``backpressure_client_wait_seconds_total``                     counter    limiter
``backpressure_client_request_duration_seconds``               summary    limiter
``backpressure_client_signal_firing``                          gauge      limiter, signal
``backpressure_client_signal_level``                           gauge      limiter, signal
``backpressure_client_signal_value``                           gauge      limiter, signal
``backpressure_client_signal_stale``                           gauge      limiter, signal
``backpressure_client_signal_last_success_timestamp_seconds``  gauge      limiter, signal
``backpressure_client_signal_polls_total``                     counter    limiter, signal
``backpressure_client_signal_errors_total``                    counter    limiter, signal, reason
``backpressure_client_signal_poll_duration_seconds``           histogram  limiter, signal
=============================================================  =========  =======================
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.metrics_core import Metric

from ._signals import DURATION_BUCKETS, SignalStats

if TYPE_CHECKING:
    from ._limiter import Backpressure, LimiterStats

__all__ = ["register_limiter"]

_log = logging.getLogger("backpressure_client.metrics")

_P = "backpressure_client_"
_L = ["limiter"]
_S = ["limiter", "signal"]

_collectors: weakref.WeakKeyDictionary[CollectorRegistry, LimiterCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register_limiter(limiter: Backpressure, registry: CollectorRegistry) -> None:
    """Expose *limiter*'s metrics through *registry*.

    The first call for a registry registers this module's collector in it;
    later calls add limiters to that collector.

    :raises ValueError: *registry* already has metrics named like ours from
        another collector (prometheus_client's duplicate check).
    """
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = LimiterCollector()
            registry.register(collector)
            _collectors[registry] = collector
    collector.add(limiter)


def _closed(limiter: Backpressure) -> bool:
    return limiter.closed


def _signal_stats(limiter: Backpressure) -> tuple[SignalStats, ...]:
    return limiter.signal_stats()


class LimiterCollector:
    """A prometheus_client collector for the limiters of one registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limiters: dict[str, weakref.ref[Backpressure]] = {}

    def add(self, limiter: Backpressure) -> None:
        """Export *limiter* (replacing a limiter of the same name)."""
        with self._lock:
            old_ref = self._limiters.get(limiter.name)
            old = old_ref() if old_ref is not None else None
            self._limiters[limiter.name] = weakref.ref(limiter)
        if old is not None and old is not limiter and not _closed(old):
            _log.warning(
                "two open limiters named %r export metrics to the same registry; only the "
                "newest is exported now. Give each limiter its own name=, or registry=None",
                limiter.name,
            )

    def _live(self) -> list[Backpressure]:
        out = []
        with self._lock:
            for name, ref in list(self._limiters.items()):
                limiter = ref()
                if limiter is None or _closed(limiter):
                    del self._limiters[name]
                else:
                    out.append(limiter)
        return out

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (for the registry's name check)."""
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        """The metrics of every live limiter, read now."""
        families = _Families()
        for limiter in self._live():
            families.add(limiter.stats(), _signal_stats(limiter))
        yield from families.all()


class _Families:
    """One scrape's metric families, filled limiter by limiter."""

    def __init__(self) -> None:
        g, c = GaugeMetricFamily, CounterMetricFamily
        self.enabled = g(
            _P + "enabled", "1 when the limiter limits, 0 when it admits everything.", labels=_L
        )
        self.window = g(_P + "window", "The congestion window, in requests.", labels=_L)
        self.window_min = g(_P + "window_min", "The smallest window, in requests.", labels=_L)
        self.window_max = g(_P + "window_max", "The largest window, in requests.", labels=_L)
        self.window_cap = g(
            _P + "window_cap",
            "The window's upper bound after graded signals, in requests.",
            labels=_L,
        )
        self.in_flight = g(_P + "in_flight", "Requests admitted and not yet released.", labels=_L)
        self.waiting = g(_P + "waiting", "Callers waiting for a slot.", labels=_L)
        self.level = g(_P + "level", "The highest graded-signal level counted, 0 to 1.", labels=_L)
        self.admissions = c(
            _P + "admissions",
            "Admission decisions: admitted, or rejected with BackpressureError.",
            labels=[*_L, "decision"],
        )
        self.completions = c(
            _P + "completions",
            "Released requests by outcome: success, dropped (overload) or ignored.",
            labels=[*_L, "outcome"],
        )
        self.increases = c(_P + "window_increases", "Times the window grew.", labels=_L)
        self.decreases = c(_P + "window_decreases", "Times the window shrank.", labels=_L)
        self.wait_seconds = c(
            _P + "wait_seconds", "Seconds callers spent waiting for a slot.", labels=_L
        )
        self.durations = SummaryMetricFamily(
            _P + "request_duration_seconds",
            "Durations of the requests whose latency was reported on release, in seconds.",
            labels=_L,
        )
        self.sig_firing = g(
            _P + "signal_firing",
            "1 while the signal counts as firing (after the failure policy).",
            labels=_S,
        )
        self.sig_level = g(
            _P + "signal_level", "The graded level the signal counts for, 0 to 1.", labels=_S
        )
        self.sig_value = g(
            _P + "signal_value",
            "The value of the signal's last good reading (NaN when none).",
            labels=_S,
        )
        self.sig_stale = g(
            _P + "signal_stale",
            "1 while the failure policy stands in for the signal (no fresh good reading).",
            labels=_S,
        )
        self.sig_last = g(
            _P + "signal_last_success_timestamp_seconds",
            "Unix time of the signal's last good poll.",
            labels=_S,
        )
        self.sig_polls = c(_P + "signal_polls", "Polls of the signal.", labels=_S)
        self.sig_errors = c(
            _P + "signal_errors", "Failed polls of the signal, by reason.", labels=[*_S, "reason"]
        )
        self.sig_durations = HistogramMetricFamily(
            _P + "signal_poll_duration_seconds",
            "How long polls of the signal took (queries, scrapes), in seconds.",
            labels=_S,
        )

    def all(self) -> list[Metric]:
        return list(vars(self).values())

    def add(self, s: LimiterStats, signals: tuple[SignalStats, ...]) -> None:
        name = [s.name]
        self.enabled.add_metric(name, 1.0 if s.enabled else 0.0)
        self.window.add_metric(name, s.window)
        self.window_min.add_metric(name, s.minimum)
        self.window_max.add_metric(name, s.maximum)
        self.window_cap.add_metric(name, s.cap)
        self.in_flight.add_metric(name, s.in_flight)
        self.waiting.add_metric(name, s.waiting)
        self.level.add_metric(name, s.level)
        self.admissions.add_metric([s.name, "admitted"], s.admitted)
        self.admissions.add_metric([s.name, "rejected"], s.rejected)
        self.completions.add_metric([s.name, "success"], s.success)
        self.completions.add_metric([s.name, "dropped"], s.dropped)
        self.completions.add_metric([s.name, "ignored"], s.ignored)
        self.increases.add_metric(name, s.window_increases)
        self.decreases.add_metric(name, s.window_decreases)
        self.wait_seconds.add_metric(name, s.wait_seconds)
        self.durations.add_metric(name, count_value=s.latency_count, sum_value=s.latency_seconds)
        for sig in signals:
            labels = [s.name, sig.name]
            self.sig_firing.add_metric(labels, 1.0 if sig.firing else 0.0)
            self.sig_level.add_metric(labels, sig.level)
            self.sig_value.add_metric(labels, sig.value if sig.value is not None else math.nan)
            self.sig_stale.add_metric(labels, 1.0 if sig.stale else 0.0)
            if sig.last_success is not None:
                self.sig_last.add_metric(labels, sig.last_success)
            self.sig_polls.add_metric(labels, sig.polls)
            for reason, count in sig.errors_by_reason.items():
                self.sig_errors.add_metric([*labels, reason], count)
            buckets = [
                ("+Inf" if math.isinf(bound) else repr(bound), float(count))
                for bound, count in zip(DURATION_BUCKETS, sig.duration_buckets, strict=False)
            ] or [("+Inf", 0.0)]
            self.sig_durations.add_metric(labels, buckets, sum_value=sig.duration_sum)
