"""Signals against a real Prometheus scraping a real backend, and the whole loop end to end.

Prometheus scrapes the backend every second; the signals poll every 0.25 s.
Every wait polls its condition with a deadline: nothing sleeps for a fixed time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from _stub_servers import MetricsBackend, wait_for

from backpressure_client import Backpressure, BackpressureConfig, BackpressureError
from backpressure_client._promql import PromQLSignal
from backpressure_client._promserver import PrometheusServer as PrometheusProcess
from backpressure_client._scrape import ScrapeSignal
from backpressure_client._signals import SignalStats, graded_level

pytestmark = pytest.mark.integration

CADENCE = 0.25  # seconds between polls of a signal
# A value set on the backend reaches a query within a scrape interval (1 s)
# plus a cadence; allow for a slow machine.
SEEN = 10.0


def config(**changes: object) -> BackpressureConfig:
    base = BackpressureConfig(
        congestion_window_min=2,
        congestion_window_max=20,
        monitoring_cadence=CADENCE,
        query_timeout=0.2,  # the default, a quarter cadence, is tight on a busy CI machine
    )
    return base.replace(**changes)


def stats(limiter: Backpressure, name: str) -> SignalStats:
    return next(s for s in limiter._supervisor.signal_stats() if s.name == name)


def visible(prometheus: PrometheusProcess, series: str, value: float) -> bool:
    return any(
        float(sample["value"][1]) == value  # type: ignore[index]
        for sample in prometheus.query(series)
    )


def test_boolean_signal_fires_when_the_metric_crosses_its_threshold_and_clears(
    backend: MetricsBackend, prometheus: PrometheusProcess
) -> None:
    backend.set("boolean", 1)
    query = 'bp_test_value{case="boolean"} > 5'
    limiter = Backpressure(
        config(),
        signals=[PromQLSignal(query, url=prometheus.url + "/api/v1/query", name="boolean")],
        registry=None,
    )
    with limiter:
        wait_for(lambda: stats(limiter, "boolean").polls >= 2, SEEN, what="polls")
        assert limiter.firing == ()
        backend.set("boolean", 10)
        wait_for(lambda: limiter.firing == ("boolean",), SEEN, what="the signal to fire")
        assert stats(limiter, "boolean").value == 10.0
        permits = [limiter.try_acquire(), limiter.try_acquire()]  # the window is at min: 2
        with pytest.raises(BackpressureError) as info:
            limiter.try_acquire()
        assert info.value.firing == ("boolean",)
        for permit in permits:
            permit.release()
        backend.set("boolean", 3)
        wait_for(lambda: limiter.firing == (), SEEN, what="the signal to clear")
        errors = stats(limiter, "boolean").errors_by_reason
        assert errors["query"] == errors["response"] == errors["http"] == 0


def test_graded_signal_follows_the_value(
    backend: MetricsBackend, prometheus: PrometheusProcess
) -> None:
    backend.set("graded", 0)
    signal = PromQLSignal(
        'max(bp_test_value{case="graded"})',
        url=prometheus.url,
        name="graded",
        warning=10,
        emergency=20,
    )
    limiter = Backpressure(config(), signals=[signal], registry=None)
    with limiter:
        wait_for(lambda: stats(limiter, "graded").value == 0.0, SEEN, what="the first value")
        assert limiter.stats().cap == 20
        backend.set("graded", 15)
        expected = graded_level(15, 10, 20)  # 1 - exp(-2) = 0.865
        wait_for(lambda: limiter.stats().level == expected, SEEN, what="level 0.865")
        assert limiter.stats().cap == math.floor(20 * (1 - expected))  # 2
        assert limiter.firing == ()
        backend.set("graded", 12)
        expected = graded_level(12, 10, 20)  # 0.551
        wait_for(lambda: limiter.stats().level == expected, SEEN, what="level 0.551")
        assert limiter.stats().cap == math.floor(20 * (1 - expected))  # 8
        backend.set("graded", 25)
        wait_for(lambda: limiter.firing == ("graded",), SEEN, what="level 1 to fire")
        assert limiter.stats().level == 1.0
        backend.set("graded", 5)
        wait_for(lambda: limiter.stats().level == 0.0, SEEN, what="level 0")
        assert limiter.stats().cap == 20
        assert limiter.firing == ()


def test_prometheus_killed_mid_run_applies_the_failure_policy_then_recovers(
    backend: MetricsBackend, own_prometheus: PrometheusProcess
) -> None:
    prometheus = own_prometheus
    backend.set("outage", 10)
    query = 'bp_test_value{case="outage"} > 5'
    policy = config(stale_after=1.0)

    def limiter(name: str, failure_policy: str) -> Backpressure:
        signal = PromQLSignal(
            query,
            url=prometheus.url,
            name=name,
            failure_policy=failure_policy,  # type: ignore[arg-type]
        )
        return Backpressure(policy, name=name, signals=[signal], registry=None)

    open_, closed = limiter("open", "fail_open"), limiter("closed", "fail_closed")
    with open_, closed:
        wait_for(
            lambda: open_.firing == ("open",) and closed.firing == ("closed",),
            SEEN,
            what="both signals to fire",
        )
        prometheus.kill()
        # Within stale_after (1 s) the last reading stands; then fail_open stops
        # counting the signal while fail_closed keeps counting it as firing.
        wait_for(lambda: open_.firing == (), SEEN, what="fail_open to clear the signal")
        last_good = stats(open_, "open").last_reading
        assert last_good is not None
        assert last_good.timestamp is not None
        assert time.monotonic() - last_good.timestamp >= 1.0
        wait_for(lambda: stats(closed, "closed").stale, SEEN, what="fail_closed to take over")
        assert closed.firing == ("closed",)
        for lim, name in ((open_, "open"), (closed, "closed")):
            s = stats(lim, name)
            assert s.stale
            assert s.errors_by_reason["connection"] >= 2
        # Requests go on: the fail_open limiter admits, and nothing blocks.
        start = time.monotonic()
        for _ in range(2):
            open_.try_acquire().release()
        assert time.monotonic() - start < 0.5

        backend.set("outage", 1)
        prometheus.start()
        wait_for(
            lambda: not stats(open_, "open").stale and not stats(closed, "closed").stale,
            SEEN,
            what="both signals to read again",
        )
        wait_for(
            lambda: open_.firing == () and closed.firing == (),
            SEEN,
            what="both signals to follow the value again",
        )
        backend.set("outage", 10)
        wait_for(
            lambda: open_.firing == ("open",) and closed.firing == ("closed",),
            SEEN,
            what="both signals to fire again",
        )


def test_direct_scrape_signal_reads_the_backend(backend: MetricsBackend) -> None:
    backend.set("scrape", 1)
    boolean = ScrapeSignal(
        backend.url + "/metrics",
        "bp_test_value",
        labels={"case": "scrape"},
        op=">",
        threshold=5,
        name="scrape-boolean",
    )
    graded = ScrapeSignal(
        backend.url + "/metrics",
        "bp_test_value",
        labels={"case": "scrape"},
        aggregate="max",
        warning=10,
        emergency=20,
        name="scrape-graded",
    )
    limiter = Backpressure(config(), signals=[boolean, graded], registry=None)
    with limiter:
        wait_for(lambda: stats(limiter, "scrape-boolean").value == 1.0, SEEN, what="a reading")
        assert limiter.firing == ()
        backend.set("scrape", 15)
        wait_for(
            lambda: (
                limiter.firing == ("scrape-boolean",)
                and limiter.stats().level == graded_level(15, 10, 20)
            ),
            SEEN,
            what="the boolean scrape to fire and the graded one to rise",
        )
        backend.set("scrape", 30)
        wait_for(
            lambda: set(limiter.firing) == {"scrape-boolean", "scrape-graded"},
            SEEN,
            what="both to fire",
        )
        backend.set("scrape", 0)
        wait_for(
            lambda: limiter.firing == () and limiter.stats().level == 0.0,
            SEEN,
            what="both to clear",
        )
    assert stats(limiter, "scrape-boolean").errors_by_reason["response"] == 0


# -- end to end --------------------------------------------------------------------------


class Load:
    """*callers* threads sending ``GET /work`` through the transport until stopped."""

    def __init__(self, limiter: Backpressure, url: str, callers: int) -> None:
        from backpressure_client._transport import BackpressureTransport

        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.rejected = 0
        self.errors: list[BaseException] = []
        self.client = httpx.Client(transport=BackpressureTransport(limiter), timeout=5.0)
        self.threads = [
            threading.Thread(target=self._run, args=(url,), daemon=True) for _ in range(callers)
        ]
        self.deadline = time.monotonic() + 60  # bounded, whatever happens

    def _run(self, url: str) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if not self._call(url):
                self.stop.wait(0.01)  # back off a little, as a real caller would

    def _call(self, url: str) -> bool:
        try:
            self.client.get(url).raise_for_status()
        except BackpressureError:
            with self.lock:
                self.rejected += 1
            return False
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()
            return False
        with self.lock:
            self.ok += 1
        return True


@contextmanager
def load(limiter: Backpressure, url: str, callers: int) -> Iterator[Load]:
    running = Load(limiter, url, callers)
    for thread in running.threads:
        thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        for thread in running.threads:
            thread.join(10)
        running.client.close()
    assert running.errors == []


def test_overload_through_the_transport_shrinks_the_window_and_it_recovers(
    backend: MetricsBackend, prometheus: PrometheusProcess
) -> None:
    # The backend copes with 6 requests in flight; 16 callers overload it.
    signal = PromQLSignal("bp_backend_in_flight > 6", url=prometheus.url, name="overloaded")
    limiter = Backpressure(
        config(congestion_window_min=2, congestion_window_max=32),
        name="e2e",
        signals=[signal],
        registry=None,
    )
    with limiter:
        peak = lowest = 0
        with load(limiter, backend.url + "/work", callers=16) as heavy:

            def overloaded_then_shrunk() -> bool:
                nonlocal peak, lowest
                window = limiter.window
                peak = max(peak, window)
                lowest = min(lowest, window) if lowest else window
                return (
                    peak > 6
                    and window <= peak // 2
                    and limiter.stats().window_decreases > 0
                    and heavy.rejected > 0
                )

            wait_for(overloaded_then_shrunk, 30, interval=0.01, what="the window to shrink")
            assert stats(limiter, "overloaded").value is not None
        assert heavy.ok > 0
        assert backend.peak_in_flight > 6
        assert limiter.stats().rejected == heavy.rejected > 0
        lowest = min(lowest, limiter.window)

        # The overload stops; a light load (3 callers) goes on, as the
        # window only grows on completed requests.
        with load(limiter, backend.url + "/work", callers=3):
            wait_for(
                lambda: limiter.firing == () and limiter.window >= 5,
                30,
                interval=0.02,
                what=f"the window to recover (now {limiter!r})",
            )
        assert limiter.window > lowest
