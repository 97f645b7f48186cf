"""backpressure-client: protect a downstream service from its own clients.

An AIMD congestion window, fed by backpressure signals, limits the requests a
client has in flight; when the window is full a call fails fast with
:class:`BackpressureError` (or waits for a slot, when asked to).
"""

from ._clock import Clock, ManualClock
from ._config import BackpressureConfig, FailurePolicy
from ._errors import (
    BackpressureClientError,
    BackpressureError,
    ConfigError,
    LimiterStateError,
    QueueFullError,
    WaitTimeoutError,
)
from ._limiter import (
    Backpressure,
    ExceptionClassifier,
    LimiterStats,
    Permit,
    classify_exception,
)
from ._window import AIMDWindow, Outcome, WindowPolicy

__version__ = "0.1.0"

__all__ = [
    "AIMDWindow",
    "Backpressure",
    "BackpressureClientError",
    "BackpressureConfig",
    "BackpressureError",
    "Clock",
    "ConfigError",
    "ExceptionClassifier",
    "FailurePolicy",
    "LimiterStateError",
    "LimiterStats",
    "ManualClock",
    "Outcome",
    "Permit",
    "QueueFullError",
    "WaitTimeoutError",
    "WindowPolicy",
    "classify_exception",
]
