"""backpressure-client: protect a downstream service from its own clients.

An AIMD congestion window, fed by backpressure signals, limits the requests a
client has in flight; when the window is full a call fails fast with
:class:`BackpressureError` (or waits for a slot, when asked to).
"""

from ._batch import BatchFailure, BatchProgress, BatchReport, arun_batch, run_batch
from ._clock import Clock, ManualClock
from ._config import BackpressureConfig, FailurePolicy
from ._decorator import ExceptionOutcomes, limit
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
from ._promql import PromQLSignal
from ._retry import retry_if_backpressure, wait_backpressure
from ._scrape import ScrapeSignal
from ._signals import (
    FunctionSignal,
    Reading,
    Signal,
    SignalError,
    SignalStats,
    function_signal,
    graded_level,
)
from ._transport import (
    AsyncBackpressureTransport,
    BackpressureTransport,
    ResponseClassifier,
    classify_http_exception,
    classify_response,
    parse_retry_after,
)
from ._window import AIMDWindow, Outcome, WindowPolicy

__version__ = "0.1.0"

__all__ = [
    "AIMDWindow",
    "AsyncBackpressureTransport",
    "Backpressure",
    "BackpressureClientError",
    "BackpressureConfig",
    "BackpressureError",
    "BackpressureTransport",
    "BatchFailure",
    "BatchProgress",
    "BatchReport",
    "Clock",
    "ConfigError",
    "ExceptionClassifier",
    "ExceptionOutcomes",
    "FailurePolicy",
    "FunctionSignal",
    "LimiterStateError",
    "LimiterStats",
    "ManualClock",
    "Outcome",
    "Permit",
    "PromQLSignal",
    "QueueFullError",
    "Reading",
    "ResponseClassifier",
    "ScrapeSignal",
    "Signal",
    "SignalError",
    "SignalStats",
    "WaitTimeoutError",
    "WindowPolicy",
    "arun_batch",
    "classify_exception",
    "classify_http_exception",
    "classify_response",
    "function_signal",
    "graded_level",
    "limit",
    "parse_retry_after",
    "retry_if_backpressure",
    "run_batch",
    "wait_backpressure",
]
