"""Type-checks the public signal API (mypy --strict reads this file; pytest never runs it)."""

from __future__ import annotations

import re

from prometheus_api_client import PrometheusConnect

from backpressure_client import (
    Backpressure,
    FunctionSignal,
    PromQLSignal,
    Reading,
    ScrapeSignal,
    Signal,
    SignalError,
    SignalStats,
    function_signal,
    graded_level,
)


class QueueDepth:
    name = "queue-depth"
    cadence = 5.0

    def poll(self) -> bool:
        return False


class AsyncFlag:
    def __init__(self) -> None:
        self.name = "flag"

    async def poll(self) -> Reading:
        return Reading(firing=False, level=0.5, value=1.0)


class Failing:
    name = "failing"

    def poll(self) -> Reading:
        raise SignalError("connection", "down")


signals: list[Signal] = [
    QueueDepth(),
    AsyncFlag(),
    Failing(),
    PromQLSignal("up == 0", url="http://prometheus:9090"),
    PromQLSignal(
        "max(load)", prometheus=PrometheusConnect(url="http://p:9090"), warning=1, emergency=2
    ),
    ScrapeSignal("http://svc/metrics", "queue_depth", labels={"q": re.compile("a|b")}, threshold=3),
]
fn: FunctionSignal = function_signal(
    "lambda", lambda: True, cadence=1.0, failure_policy="fail_closed"
)
limiter = Backpressure(signals=[*signals, fn], registry=None)
level: float = graded_level(1.5, 1.0, 2.0, curve=4.0)
stats: tuple[SignalStats, ...] = limiter._supervisor.signal_stats()
