"""Backpressure signals: the reading contract, the protocol and the failure policy.

A *signal* is anything with a ``name`` and a ``poll()`` method.  The limiter's
supervisor calls ``poll()`` once a cadence and turns what it returns into a
:class:`Reading`; when ``poll()`` raises, times out or returns garbage, the
*failure policy* decides what the limiter counts instead:

* the last good reading is kept until it is older than ``stale_after``
  (default: three cadences);
* after that the signal counts as not firing (``fail_open``, the default) or
  as firing (``fail_closed``), again at every poll, until a poll succeeds.

A signal that has never been read successfully has no reading to keep: the
policy applies from its first failed poll.

This module holds the pure parts: no threads, no I/O.  The pollers live in
:mod:`backpressure_client._supervisor`.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, get_args

from ._clock import Clock
from ._config import FailurePolicy
from ._errors import BackpressureClientError, ConfigError
from ._redact import redact_text

__all__ = [
    "FunctionSignal",
    "Reading",
    "Signal",
    "SignalError",
    "SignalErrorReason",
    "SignalStats",
    "function_signal",
    "graded_level",
]

_log = logging.getLogger("backpressure_client.signals")

#: Why a poll failed.  Every failure is counted under one of these.
SignalErrorReason = Literal["timeout", "connection", "http", "query", "response", "exception"]
_REASONS: tuple[str, ...] = get_args(SignalErrorReason)

#: Upper bounds (seconds) of the poll-duration histogram's buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    math.inf,
)


class SignalError(BackpressureClientError):
    """A signal could not be read.  Raise it from a custom signal's ``poll()``.

    Any other exception raised by ``poll()`` is handled the same way and
    counted with the reason ``"exception"``.

    :param reason: one of ``timeout`` (no answer in time), ``connection``
        (could not connect, connection lost), ``http`` (an HTTP error status),
        ``query`` (the server rejected the query), ``response`` (an answer
        that cannot be used: not JSON, truncated, the wrong shape) or
        ``exception`` (anything else).
    :param message: what went wrong, without secrets: it is logged.
    """

    def __init__(self, reason: SignalErrorReason, message: str) -> None:
        if reason not in _REASONS:
            raise ValueError(f"reason={reason!r}: must be one of {', '.join(_REASONS)}")
        self.reason: SignalErrorReason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Reading:
    """One reading of a signal.

    :param firing: whether the signal fires: the window shrinks while any
        signal fires.
    :param level: a graded signal's level in [0, 1]: the window is capped at
        ``floor(max * (1 - level))`` (never below min); 0 for boolean signals.
    :param value: the number the reading was made from (a query's sample
        value, a scraped metric's aggregate), when there is one.
    :param timestamp: when the reading was made, in seconds of the limiter's
        clock; ``None`` lets the poller stamp it when ``poll()`` returns.
    """

    firing: bool
    level: float = 0.0
    value: float | None = None
    timestamp: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.firing, bool):
            raise TypeError(f"firing={self.firing!r}: must be True or False")
        level = self.level
        if (
            isinstance(level, bool)
            or not isinstance(level, (int, float))
            or not (0.0 <= level <= 1.0)
        ):
            raise ValueError(f"level={level!r}: must be a number in [0, 1]")


class Signal(Protocol):
    """A backpressure signal: what ``Backpressure(signals=[...])`` accepts.

    Required:

    ``name`` (str)
        Unique within a limiter; shown in ``BackpressureError.firing``, in
        logs and as the ``signal`` label of the metrics.
    ``poll()``
        Reads the signal once and returns a :class:`Reading` or a ``bool``
        (``True``: firing).  It may be ``async def``: async limiters await it
        in their event loop, threaded limiters run it with :func:`anyio.run`
        (asyncio) in a worker thread.  A plain ``def poll`` runs in a worker
        thread in both cases, so it may block (within its timeout).  Raise
        :class:`SignalError` (or anything) when the signal cannot be read.

    Optional attributes, each ``None`` or absent to use the limiter's
    configuration:

    ``cadence`` (seconds)
        Time between two polls (``monitoring_cadence``).
    ``timeout`` (seconds)
        How long a poll may take before it counts as failed
        (``query_timeout``, else a quarter of the cadence, at most 10 s).
        Must be below the cadence.  A poll still running then is abandoned,
        and the signal is not polled again until it returns.
    ``stale_after`` (seconds)
        How long the last good reading is kept while polls fail
        (``stale_after``, else three cadences).
    ``failure_policy``
        ``"fail_open"`` or ``"fail_closed"`` (``failure_policy``).
    ``close()``
        Called once when the limiter closes (after a poll in flight ends).
    """

    @property
    def name(self) -> str:
        """The signal's name."""
        ...

    def poll(self) -> Reading | bool | Awaitable[Reading | bool]:
        """Read the signal once."""
        ...


def graded_level(value: float, warning: float, emergency: float, curve: float = 4.0) -> float:
    """The level of a graded signal, in [0, 1], for *value*.

    0 at or below *warning*, 1 at or above *emergency*, and
    ``1 - exp(-curve * x)`` in between, with
    ``x = (value - warning) / (emergency - warning)``: a larger *curve*
    reacts more strongly just above the warning.  When *emergency* is below
    *warning* the scale is reversed (for metrics where lower is worse, such
    as free memory): 0 at or above *warning*, 1 at or below *emergency*.
    ``+inf`` and ``-inf`` are handled like any other value; NaN is an error.

    :raises ValueError: *value* is NaN, or the thresholds are invalid.
    """
    if math.isnan(value):
        raise ValueError("value=nan: a graded signal needs a number")
    span = emergency - warning
    if not span or not math.isfinite(span):
        raise ValueError(
            f"warning={warning!r}, emergency={emergency!r}: must be different finite numbers"
        )
    x = (value - warning) / span
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    return 1.0 - math.exp(-curve * x)


def threshold_problems(warning: float | None, emergency: float | None, curve: float) -> list[str]:
    """Problems with a graded signal's thresholds (empty when valid or not graded)."""
    out: list[str] = []
    if (warning is None) != (emergency is None):
        out.append(
            f"warning={warning!r}, emergency={emergency!r}: a graded signal needs both "
            "thresholds (or neither, for a boolean signal)"
        )
    elif warning is not None and emergency is not None:
        for label, v in (("warning", warning), ("emergency", emergency)):
            if not _is_finite_number(v):
                out.append(f"{label}={v!r}: must be a finite number")
        if not out and warning == emergency:
            out.append(f"warning={warning!r}, emergency={emergency!r}: must be different")
    if not _is_finite_number(curve) or curve <= 0:
        out.append(f"curve={curve!r}: must be a finite number > 0")
    return out


def option_problems(
    cadence: object, timeout: object, stale_after: object, failure_policy: object
) -> list[str]:
    """Problems with a signal's optional scheduling attributes."""
    out: list[str] = []
    for label, v in (("cadence", cadence), ("timeout", timeout), ("stale_after", stale_after)):
        if v is not None and (not _is_finite_number(v) or v <= 0):  # type: ignore[operator]
            out.append(f"{label}={v!r}: must be a number of seconds > 0, or None")
    if failure_policy not in (None, "fail_open", "fail_closed"):
        out.append(f"failure_policy={failure_policy!r}: must be 'fail_open', 'fail_closed' or None")
    return out


#: The timeout of a built-in signal used on its own, outside a limiter (seconds).
DEFAULT_TIMEOUT = 10.0


def default_query_timeout(cadence: float) -> float:
    """The default timeout of a signal polled every *cadence* seconds.

    A quarter of the cadence, at most :data:`DEFAULT_TIMEOUT` seconds.
    """
    return min(DEFAULT_TIMEOUT, cadence / 4)


def default_stale_after(cadence: float) -> float:
    """The default ``stale_after`` of a signal polled every *cadence* seconds: three cadences."""
    return 3 * cadence


def _is_finite_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- function signals ---------------------------------------------------------


class FunctionSignal:
    """A signal made from a plain function; see :func:`function_signal`.

    :param name: the signal's name.
    :param fn: called with no arguments once a cadence; returns a
        :class:`Reading` or a ``bool`` (``True``: firing).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[], Reading | bool],
        *,
        cadence: float | None = None,
        timeout: float | None = None,
        stale_after: float | None = None,
        failure_policy: FailurePolicy | None = None,
    ) -> None:
        problems = option_problems(cadence, timeout, stale_after, failure_policy)
        if not isinstance(name, str) or not name:
            problems.insert(0, f"name={name!r}: must be a non-empty string")
        if not callable(fn):
            problems.append(f"fn={fn!r}: must be callable")
        if problems:
            raise ConfigError(problems)
        self.name = name
        self.cadence = cadence
        self.timeout = timeout
        self.stale_after = stale_after
        self.failure_policy = failure_policy
        self._fn = fn

    def poll(self) -> Reading | bool:
        """Call the function."""
        return self._fn()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class AsyncFunctionSignal(FunctionSignal):
    """A signal made from an ``async`` function; see :func:`function_signal`."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], Awaitable[Reading | bool]],
        *,
        cadence: float | None = None,
        timeout: float | None = None,
        stale_after: float | None = None,
        failure_policy: FailurePolicy | None = None,
    ) -> None:
        super().__init__(
            name,
            fn,  # type: ignore[arg-type]
            cadence=cadence,
            timeout=timeout,
            stale_after=stale_after,
            failure_policy=failure_policy,
        )
        self._afn = fn

    async def poll(self) -> Reading | bool:  # type: ignore[override]
        """Await the function."""
        return await self._afn()


def function_signal(
    name: str,
    fn: Callable[[], Reading | bool] | Callable[[], Awaitable[Reading | bool]],
    *,
    cadence: float | None = None,
    timeout: float | None = None,
    stale_after: float | None = None,
    failure_policy: FailurePolicy | None = None,
) -> FunctionSignal:
    """Make a signal from a function that returns a :class:`Reading` or a ``bool``.

    ``function_signal("queue", lambda: jobs.qsize() > 1000, cadence=5)``
    fires while more than 1000 jobs wait, checked every 5 s.  *fn* may be an
    ``async def`` function.  The keyword arguments are the optional signal
    attributes described in :class:`Signal` (seconds; ``None`` uses the
    limiter's configuration).

    :raises ConfigError: naming every bad argument.
    """
    cls = AsyncFunctionSignal if inspect.iscoroutinefunction(fn) else FunctionSignal
    return cls(
        name,
        fn,  # type: ignore[arg-type]
        cadence=cadence,
        timeout=timeout,
        stale_after=stale_after,
        failure_policy=failure_policy,
    )


def as_reading(result: object, now: float) -> Reading:
    """Turn what ``poll()`` returned into a time-stamped reading.

    :raises SignalError: (``response``) for anything but a Reading or a bool.
    """
    if isinstance(result, Reading):
        return result if result.timestamp is not None else replace(result, timestamp=now)
    if isinstance(result, bool):
        return Reading(firing=result, timestamp=now)
    shown = redact_text(repr(result))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise SignalError(
        "response",
        f"poll() returned {shown} ({type(result).__name__}); expected a Reading or a bool",
    )


# -- statistics and the failure policy ------------------------------------------


@dataclass(frozen=True)
class SignalStats:
    """A snapshot of one signal's state, as the limiter's metrics expose it.

    Times are seconds; counts are polls since the limiter was created.
    """

    name: str
    cadence: float
    timeout: float
    stale_after: float
    failure_policy: FailurePolicy
    #: what the limiter counts now (after the failure policy).
    firing: bool
    #: the graded level the limiter counts now, in [0, 1].
    level: float
    #: the value of the last good reading, or ``None``.
    value: float | None
    #: whether the failure policy is in force (no good reading fresh enough).
    stale: bool
    #: Unix time of the last good poll, or ``None``.
    last_success: float | None
    #: the last good reading, stamped by the limiter's clock.
    last_reading: Reading | None
    polls: int
    errors: int
    #: failed polls by reason (every reason present, zeros included).
    errors_by_reason: Mapping[str, int] = field(default_factory=dict)
    #: polls that failed in a row, up to now.
    consecutive_errors: int = 0
    #: poll durations: how many were measured, their sum (seconds), and the
    #: cumulative count at or below each bound of ``DURATION_BUCKETS``.
    duration_count: int = 0
    duration_sum: float = 0.0
    duration_buckets: tuple[int, ...] = ()


class SignalTracker:
    """The failure policy and the statistics of one signal.

    Pure bookkeeping, thread-safe, no I/O: the poller tells it how each poll
    ended; it answers with the reading to report to the limiter, or ``None``
    when the limiter's board should stay as it is.

    :param clock: the limiter's clock (seconds), for reading ages.
    """

    def __init__(
        self,
        name: str,
        *,
        limiter: str,
        cadence: float,
        timeout: float,
        stale_after: float,
        policy: FailurePolicy,
        clock: Clock,
        logger: logging.Logger = _log,
    ) -> None:
        self.name = name
        self.limiter = limiter
        self.cadence = cadence
        self.timeout = timeout
        self.stale_after = stale_after
        self.policy: FailurePolicy = policy
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._last_good: Reading | None = None
        self._last_success_wall: float | None = None
        self._effective: Reading | None = None
        self._stale = False
        self._polls = 0
        self._errors = 0
        self._by_reason = dict.fromkeys(_REASONS, 0)
        self._consecutive = 0
        self._last_log: float | None = None
        self._unlogged = 0
        self._duration_count = 0
        self._duration_sum = 0.0
        self._buckets = [0] * len(DURATION_BUCKETS)

    def success(self, reading: Reading, duration: float | None) -> Reading:
        """Record a good poll; return the reading to report."""
        with self._lock:
            self._polls += 1
            self._observe(duration)
            failures = self._consecutive
            self._consecutive = 0
            self._unlogged = 0
            self._last_log = None
            self._last_good = reading
            self._last_success_wall = time.time()
            self._effective = reading
            self._stale = False
        if failures:
            self._log.info(
                "backpressure signal %r (limiter %r) recovered after %d failed poll%s",
                self.name,
                self.limiter,
                failures,
                "" if failures == 1 else "s",
            )
        return reading

    def failure(self, error: SignalError, duration: float | None) -> Reading | None:
        """Record a failed poll; return the reading the policy counts, or ``None`` to keep."""
        now = self._clock()
        with self._lock:
            self._polls += 1
            self._errors += 1
            self._by_reason[error.reason] += 1
            self._consecutive += 1
            self._observe(duration)
            good = self._last_good
            age = None if good is None or good.timestamp is None else now - good.timestamp
            keep = age is not None and age < self.stale_after
            out: Reading | None
            if keep:
                out = None
                action = (
                    f"keeping its reading from {age:.3g} s ago "
                    f"(stale after {self.stale_after:.3g} s)"
                )
            else:
                self._stale = True
                firing = self.policy == "fail_closed"
                out = Reading(firing=firing, timestamp=now)
                self._effective = out
                since = "no good reading yet" if age is None else f"no good reading for {age:.3g} s"
                action = (
                    f"{since}: counting it as {'firing' if firing else 'not firing'} "
                    f"({self.policy})"
                )
            log_now = self._last_log is None or now - self._last_log >= self.cadence
            if log_now:
                skipped = self._unlogged
                self._unlogged = 0
                self._last_log = now
            else:
                self._unlogged += 1
        if log_now:
            more = (
                f" ({skipped} more failure{'s' if skipped != 1 else ''} since)" if skipped else ""
            )
            self._log.warning(
                "backpressure signal %r (limiter %r): poll failed (%s: %s); %s%s",
                self.name,
                self.limiter,
                error.reason,
                redact_text(str(error)),
                action,
                more,
            )
        return out

    def _observe(self, duration: float | None) -> None:
        if duration is None:
            return
        self._duration_count += 1
        self._duration_sum += duration
        self._buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1

    def stats(self) -> SignalStats:
        """A consistent snapshot."""
        with self._lock:
            eff = self._effective
            good = self._last_good
            cumulative: list[int] = []
            total = 0
            for n in self._buckets:
                total += n
                cumulative.append(total)
            return SignalStats(
                name=self.name,
                cadence=self.cadence,
                timeout=self.timeout,
                stale_after=self.stale_after,
                failure_policy=self.policy,
                firing=eff.firing if eff is not None else False,
                level=eff.level if eff is not None else 0.0,
                value=good.value if good is not None else None,
                stale=self._stale,
                last_success=self._last_success_wall,
                last_reading=good,
                polls=self._polls,
                errors=self._errors,
                errors_by_reason=dict(self._by_reason),
                consecutive_errors=self._consecutive,
                duration_count=self._duration_count,
                duration_sum=self._duration_sum,
                duration_buckets=tuple(cumulative),
            )


def describe_exception(exc: BaseException, limit: int = 200) -> str:
    """A short, secret-free description of *exc* and its root cause, for logs.

    HTTP client errors nest the useful part (``Connection refused``) under
    layers of pool and URL text; this keeps the innermost ``OSError``'s text
    when there is one.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    root: BaseException = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        root = cause
        if isinstance(cause, OSError) and cause.strerror:
            text = cause.strerror
            break
        nxt = getattr(cause, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = cause.__cause__ or cause.__context__
        if nxt is None and cause.args and isinstance(cause.args[0], BaseException):
            nxt = cause.args[0]
        cause = nxt
    else:
        text = str(root) or type(root).__name__
    text = redact_text(f"{type(exc).__name__}: {text}" if root is not exc else text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
