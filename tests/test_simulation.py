"""The control-quality simulation's mechanics (benchmarks/sim): fast units, no plots."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sim import (
    Admission,
    ClientParams,
    ErrorRateSignal,
    MonitoringParams,
    PolicySpec,
    Prometheus,
    Request,
    Scenario,
    Service,
    ServiceParams,
    classify,
    histogram_quantile,
    simulate,
)
from sim._report import recovery_time

from backpressure_client import Outcome, WindowPolicy

DEFAULTS = PolicySpec("defaults", "defaults", "window", WindowPolicy())


def _request(service_time: float = 1.0) -> Request:
    return Request(client=0, sent=0.0, service_time=service_time, token=None)


def _scenario(**changes: object) -> Scenario:
    """A small, short overload: 10 workers, 3x their capacity, 8 s."""
    base = Scenario(
        key="small",
        title="small",
        description="small",
        duration=8.0,
        measure=(1.0, 8.0),
        clients=1,
        arrivals=((0.0, 300.0),),
        capacity=((0.0, 10),),
        service=ServiceParams(workers=10, base_latency=0.1),
        monitoring=MonitoringParams(
            scrape_interval=1.0, scrape_offset=0.5, rate_window=4.0, cadence=1.0
        ),
        client=ClientParams(window_min=2, window_max=40, timeout=1.0),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# -- the service --------------------------------------------------------------


def test_service_starts_queues_then_rejects_when_the_queue_is_full() -> None:
    service = Service(ServiceParams(workers=2, queue_ratio=0.5))  # queue bound 1
    admissions = [service.submit(_request(), 0.0) for _ in range(4)]
    assert admissions == [
        Admission.STARTED,
        Admission.STARTED,
        Admission.QUEUED,
        Admission.REJECTED,
    ]
    assert (service.busy, len(service.queue), service.error_total) == (2, 1, 1)


def test_service_finishing_a_request_starts_the_oldest_queued_one() -> None:
    service = Service(ServiceParams(workers=1, queue_ratio=2.0))
    first, second, third = _request(), _request(), _request()
    for r in (first, second, third):
        service.submit(r, 0.0)
    assert service.finish(first, 1.0) is second
    assert service.busy == 1
    assert list(service.queue) == [third]
    # Server-side latency includes the queueing: 1 s in the queue for `second`.
    assert service.finish(second, 2.0) is third
    assert service.duration_sum == pytest.approx(1.0 + 2.0)


def test_service_capacity_drop_starts_nothing_until_below_the_new_capacity() -> None:
    service = Service(ServiceParams(workers=2, queue_ratio=2.0))
    running = [_request(), _request()]
    for r in running:
        service.submit(r, 0.0)
    queued = _request()
    service.submit(queued, 0.0)
    assert service.set_workers(1) == []
    assert service.finish(running[0], 1.0) is None  # still 1 busy >= 1 worker
    assert service.finish(running[1], 1.0) is queued
    assert service.set_workers(2) == []


def test_service_counts_work_done_for_clients_that_gave_up() -> None:
    service = Service(ServiceParams(workers=1))
    request = _request()
    service.submit(request, 0.0)
    request.answered = True  # the client timed out
    service.finish(request, 5.0)
    assert service.served_abandoned == 1
    assert service.ok_total == 1


# -- Prometheus -----------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (0.1, 0.5, 1.0)
    assert histogram_quantile(0.95, bounds, [50, 90, 100, 100]) == pytest.approx(0.75)
    assert histogram_quantile(0.5, bounds, [50, 90, 100, 100]) == pytest.approx(0.1)
    assert histogram_quantile(0.99, bounds, [0, 0, 0, 10]) == 1.0  # +Inf: highest bound
    assert math.isnan(histogram_quantile(0.5, bounds, [0, 0, 0, 0]))


def test_rate_sees_only_scraped_samples_inside_the_window() -> None:
    prometheus = Prometheus(retention=120.0)
    # snapshot = (ok, errors, buckets..., count); only the error counter matters here.
    for t, errors in ((0.0, 0), (15.0, 30), (30.0, 60)):
        prometheus.scrape(t, (0, errors))
    signal = ErrorRateSignal(window=60.0, threshold=1.5)
    assert prometheus.rate(40.0, 60.0, 1) == pytest.approx(2.0)
    assert signal.firing(prometheus, 40.0)
    # Errors stopped after 30 s, but no scrape has shown it yet: still firing.
    assert signal.firing(prometheus, 44.0)
    # Range selectors are left-open (as in Prometheus 3): (15, 75] holds one sample.
    assert prometheus.rate(75.0, 60.0, 1) is None
    # One sample left in (44, 104]: no rate, so no firing.
    assert prometheus.rate(104.0, 60.0, 1) is None
    assert not signal.firing(prometheus, 104.0)


# -- outcomes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (302, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (429, Outcome.DROPPED),
        (503, Outcome.DROPPED),
        (None, Outcome.DROPPED),
        (500, Outcome.IGNORED),
    ],
)
def test_outcomes_mirror_the_transport_classifier(status: int | None, outcome: Outcome) -> None:
    assert classify(status, local_drops=True) is outcome
    assert classify(status, local_drops=False) is Outcome.SUCCESS


# -- whole runs -----------------------------------------------------------------


def test_a_run_is_a_pure_function_of_its_seed() -> None:
    scenario = _scenario()
    a, b = simulate(scenario, DEFAULTS, seed=7), simulate(scenario, DEFAULTS, seed=7)
    assert a == b
    c = simulate(scenario, DEFAULTS, seed=8)
    assert (c.attempts, c.latencies) != (a.attempts, a.latencies)


def test_no_limiter_overloads_the_service_and_gets_503s() -> None:
    result = simulate(_scenario(), PolicySpec("none", "none", "none"))
    # 3x overload: about two thirds of the requests find the queue full.
    assert result.rejected == 0
    assert 0.55 < result.wasted_share < 0.75
    assert result.goodput == pytest.approx(100.0, rel=0.1)  # C / L = 10 / 0.1 s


def test_the_oracle_never_queues() -> None:
    result = simulate(_scenario(), PolicySpec("oracle", "oracle", "oracle"))
    assert result.errors == result.timeouts == 0
    assert max(result.series.in_flight) <= 10
    assert max(result.series.at_service) <= 10


def test_timed_out_requests_still_occupy_the_service() -> None:
    # Timeout below every service time: nothing succeeds, the workers stay busy.
    scenario = _scenario(client=ClientParams(timeout=0.01))
    result = simulate(scenario, PolicySpec("none", "none", "none"))
    assert result.ok == 0
    assert result.timeouts > 0
    assert result.served_abandoned > 0


def test_the_limiter_window_stays_within_its_range() -> None:
    result = simulate(_scenario(), DEFAULTS)
    assert result.rejected > 0
    assert min(result.series.window) >= 2
    assert max(result.series.window) <= 40


# -- recovery -------------------------------------------------------------------


def test_recovery_is_when_goodput_reaches_ninety_percent_and_holds() -> None:
    oracle = [100] * 100
    late = [0] * 10 + [95] * 90
    assert recovery_time(late, oracle, 0.0, 100.0) == 10.0
    flapping = [100 if (t // 10) % 2 else 0 for t in range(100)]
    assert recovery_time(flapping, oracle, 0.0, 100.0) is None
