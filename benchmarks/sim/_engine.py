"""The discrete-event loop: one scenario, one policy, one seed.

Virtual time only: a heap of timed events, a :class:`ManualClock` set to each
event's time before it is handled, no sleeps, no threads.  Ties are broken by
insertion order, so a run is a pure function of its inputs.

Events: a client's next arrival (Poisson, per-client RNG), a request
finishing at the service, a 503 reaching its client, a client timing out
(kept in a FIFO: every request has the same timeout), a scrape, a client's
signal poll, a capacity step, a time-series sample.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from backpressure_client import BackpressureConfig, ManualClock, WindowPolicy

from ._gates import Gate, LimiterGate, OpenGate, PolicySpec, StaticGate, classify
from ._prometheus import ErrorRateSignal, LatencySignal, Prometheus, Signal
from ._scenarios import Scenario
from ._service import Admission, Request, Service

__all__ = ["RunResult", "Series", "make_signals", "shares", "simulate"]

_ARRIVAL, _DONE, _REJECTED, _SCRAPE, _POLL, _CAPACITY, _SAMPLE, _END = range(8)


@dataclass
class Series:
    """Time series sampled every ``step`` seconds (sums over clients)."""

    step: float
    times: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    at_service: list[int] = field(default_factory=list)
    firing: list[bool] = field(default_factory=list)
    capacity: list[int] = field(default_factory=list)


@dataclass
class RunResult:
    """What one run measured.  Counts cover the scenario's ``measure`` interval."""

    scenario: str
    policy: str
    seed: int
    measure_seconds: float
    attempts: int = 0
    rejected: int = 0
    sent: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    #: sorted latencies of the successful requests, in seconds.
    latencies: list[float] = field(default_factory=list)
    #: successful requests completed in each whole second of the run.
    goodput_bins: list[int] = field(default_factory=list)
    #: successes per client over the measure interval.
    per_client_ok: list[int] = field(default_factory=list)
    #: worker-served requests whose client had already timed out (whole run).
    served_abandoned: int = 0
    series: Series = field(default_factory=lambda: Series(1.0))
    #: window decreases summed over clients (limiter runs only).
    window_decreases: int = 0

    @property
    def goodput(self) -> float:
        """Successful requests per second over the measure interval."""
        return self.ok / self.measure_seconds if self.measure_seconds else 0.0

    @property
    def reached(self) -> int:
        """Requests that reached the service and were answered or timed out."""
        return self.ok + self.errors + self.timeouts

    @property
    def wasted_share(self) -> float:
        """The share of requests that reached the service and failed (503/429, timeout)."""
        return (self.errors + self.timeouts) / self.reached if self.reached else 0.0

    @property
    def rejected_share(self) -> float:
        """The share of the client's attempts that its limiter turned away."""
        return self.rejected / self.attempts if self.attempts else 0.0

    def percentile(self, p: float) -> float:
        """The *p*-th percentile (0-100, nearest rank) latency of the successes, seconds."""
        data = self.latencies
        if not data:
            return math.nan
        k = max(0, math.ceil(p / 100 * len(data)) - 1)
        return data[k]


def shares(total: int, parts: int) -> list[int]:
    """*total* split into *parts* integers as evenly as possible (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _make_gate(policy: PolicySpec, scenario: Scenario, clock: ManualClock, i: int) -> Gate:
    if policy.kind == "none":
        return OpenGate()
    if policy.kind == "oracle":
        return StaticGate(shares(scenario.capacity[0][1], scenario.clients)[i])
    config = BackpressureConfig(
        congestion_window_min=scenario.client.window_min,
        congestion_window_max=scenario.client.window_max,
        monitoring_cadence=scenario.monitoring.cadence,
        window_policy=policy.window_policy or WindowPolicy(),
    )
    return LimiterGate(config, clock, name=f"client{i}")


def make_signals(scenario: Scenario) -> list[Signal]:
    """The queries every client's limiter is fed with."""
    m = scenario.monitoring
    return [
        ErrorRateSignal(m.rate_window, m.error_rate_threshold),
        LatencySignal(m.rate_window, m.latency_quantile, m.latency_threshold),
    ]


def simulate(
    scenario: Scenario, policy: PolicySpec, seed: int = 1, sample_step: float = 0.5
) -> RunResult:
    """Run *scenario* under *policy* and return what it measured.

    :param seed: seeds the arrivals and the service times; two runs with the
        same inputs return equal results.
    :param sample_step: seconds between two time-series samples.
    """
    clock = ManualClock()
    service = Service(scenario.service)
    monitoring = scenario.monitoring
    prometheus = Prometheus(retention=2 * monitoring.rate_window)
    limited = policy.kind == "window"
    signals = make_signals(scenario) if policy.signals and limited else []
    n = scenario.clients
    gates = [_make_gate(policy, scenario, clock, i) for i in range(n)]
    local_drops = policy.local_drops
    ok_outcome = classify(200, local_drops=local_drops)
    error_outcome = classify(scenario.service.reject_code, local_drops=local_drops)
    timeout_outcome = classify(None, local_drops=local_drops)
    timeout = scenario.client.timeout
    duration = scenario.duration
    m0, m1 = scenario.measure
    result = RunResult(
        scenario=scenario.key,
        policy=policy.key,
        seed=seed,
        measure_seconds=m1 - m0,
        goodput_bins=[0] * (math.ceil(duration) + 1),
        per_client_ok=[0] * n,
        series=Series(sample_step),
    )
    bins = result.goodput_bins
    per_client_ok = result.per_client_ok
    latencies = result.latencies
    series = result.series

    # Common random numbers: the arrival streams and the service-time stream
    # do not depend on the policy, so every policy sees the same load.
    arrival_rngs = [random.Random(f"{seed}:arrivals:{i}") for i in range(n)]
    service_rng = random.Random(f"{seed}:service")
    mu, sigma = scenario.service.log_mu, scenario.service.latency_sigma
    gauss = service_rng.gauss
    exp = math.exp
    steps = scenario.arrivals

    heap: list[tuple[float, int, int, Any]] = []
    counter = itertools.count()

    def push(t: float, kind: int, payload: Any) -> None:
        heapq.heappush(heap, (t, next(counter), kind, payload))

    def next_arrival(t: float, i: int) -> float:
        # A piecewise-constant Poisson rate: draw with the rate in force; if
        # the draw crosses a step, restart from the step (memoryless).
        rng = arrival_rngs[i]
        while True:
            rate = 0.0
            boundary = math.inf
            for start, total in steps:
                if start <= t:
                    rate = total / n
                else:
                    boundary = start
                    break
            nxt = t + rng.expovariate(rate) if rate > 0 else math.inf
            if nxt < boundary:
                return nxt
            if boundary == math.inf:
                return math.inf
            t = boundary

    for i in range(n):
        first = next_arrival(0.0, i)
        if first < duration:
            push(first, _ARRIVAL, i)
    push(monitoring.scrape_offset, _SCRAPE, None)
    if signals:
        for i in range(n):
            # Clients poll at start, their phases spread over one cadence.
            push(i * monitoring.cadence / n, _POLL, i)
    for start, workers in scenario.capacity[1:]:
        push(start, _CAPACITY, workers)
    push(0.0, _SAMPLE, None)
    push(duration, _END, None)

    pending: deque[Request] = deque()  # requests awaiting an answer, in send order

    def answer(req: Request, t: float, status: int | None) -> None:
        req.answered = True
        latency = t - req.sent
        if status == 200:
            bins[int(t)] += 1
            outcome = ok_outcome
            if m0 <= t < m1:
                result.ok += 1
                per_client_ok[req.client] += 1
                latencies.append(latency)
        else:
            outcome = error_outcome if status is not None else timeout_outcome
            if m0 <= t < m1:
                if status is None:
                    result.timeouts += 1
                else:
                    result.errors += 1
        gates[req.client].release(req.token, outcome, latency)

    heappop = heapq.heappop
    set_time = clock.set
    while heap:
        t = heap[0][0]
        # Client timeouts due before the next event fire first.
        while pending:
            head = pending[0]
            if head.answered:
                pending.popleft()
                continue
            deadline = head.sent + timeout
            if deadline < t:
                pending.popleft()
                set_time(deadline)
                answer(head, deadline, None)
                continue
            break
        t, _, kind, payload = heappop(heap)
        set_time(t)
        if kind == _ARRIVAL:
            i = payload
            nxt = next_arrival(t, i)
            if nxt < duration:
                push(nxt, _ARRIVAL, i)
            service_time = exp(mu + sigma * gauss(0.0, 1.0))  # lognormal
            in_window = m0 <= t < m1
            if in_window:
                result.attempts += 1
            token = gates[i].admit()
            if token is None:
                if in_window:
                    result.rejected += 1
                continue
            if in_window:
                result.sent += 1
            req = Request(i, t, service_time, token)
            pending.append(req)
            admission = service.submit(req, t)
            if admission is Admission.STARTED:
                push(t + service_time, _DONE, req)
            elif admission is Admission.REJECTED:
                push(t + scenario.service.reject_latency, _REJECTED, req)
        elif kind == _DONE:
            req = payload
            started = service.finish(req, t)
            if started is not None:
                push(t + started.service_time, _DONE, started)
            if not req.answered:
                answer(req, t, 200)
        elif kind == _REJECTED:
            req = payload
            if not req.answered:
                answer(req, t, scenario.service.reject_code)
        elif kind == _SCRAPE:
            prometheus.scrape(t, service.snapshot())
            push(t + monitoring.scrape_interval, _SCRAPE, None)
        elif kind == _POLL:
            gate = gates[payload]
            for signal in signals:
                gate.report(signal.name, signal.firing(prometheus, t))
            push(t + monitoring.cadence, _POLL, payload)
        elif kind == _CAPACITY:
            for req in service.set_workers(payload):
                push(t + req.service_time, _DONE, req)
            for gate, limit in zip(gates, shares(payload, n), strict=True):
                gate.set_capacity(limit)
        elif kind == _SAMPLE:
            series.times.append(t)
            windows = [g.window for g in gates]
            series.window.append(
                math.nan if windows[0] is None else float(sum(w or 0 for w in windows))
            )
            series.in_flight.append(sum(g.in_flight for g in gates))
            series.at_service.append(service.in_system)
            series.firing.append(any(g.firing for g in gates))
            series.capacity.append(service.workers)
            push(t + sample_step, _SAMPLE, None)
        else:  # _END
            break

    latencies.sort()
    result.served_abandoned = service.served_abandoned
    for gate in gates:
        if isinstance(gate, LimiterGate):
            result.window_decreases += gate.limiter.stats().window_decreases
    return result
