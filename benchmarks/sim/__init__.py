"""A deterministic discrete-event simulation of clients, their limiters and a service.

It drives the project's real limiter (:class:`backpressure_client.Backpressure`)
on virtual time and compares policies side by side; ``benchmarks/simulate.py``
is its command line.
"""

from ._engine import RunResult, Series, make_signals, shares, simulate
from ._gates import Gate, LimiterGate, OpenGate, PolicySpec, StaticGate, classify
from ._prometheus import (
    ErrorRateSignal,
    LatencySignal,
    MonitoringParams,
    Prometheus,
    Signal,
    histogram_quantile,
)
from ._scenarios import ClientParams, Scenario, default_policies, default_scenarios
from ._service import DEFAULT_BUCKETS, Admission, Request, Service, ServiceParams

__all__ = [
    "DEFAULT_BUCKETS",
    "Admission",
    "ClientParams",
    "ErrorRateSignal",
    "Gate",
    "LatencySignal",
    "LimiterGate",
    "MonitoringParams",
    "OpenGate",
    "PolicySpec",
    "Prometheus",
    "Request",
    "RunResult",
    "Scenario",
    "Series",
    "Service",
    "ServiceParams",
    "Signal",
    "StaticGate",
    "classify",
    "default_policies",
    "default_scenarios",
    "histogram_quantile",
    "make_signals",
    "shares",
    "simulate",
]
