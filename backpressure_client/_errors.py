"""The package's exceptions: one base class, specific subclasses beneath it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BackpressureClientError",
    "BackpressureError",
    "ConfigError",
    "LimiterStateError",
    "QueueFullError",
    "WaitTimeoutError",
]


class BackpressureClientError(Exception):
    """Base class of every exception this package raises on purpose."""


class ConfigError(BackpressureClientError, ValueError):
    """A configuration is invalid.

    :ivar problems: one human-readable line per bad field, each naming the
        field, the value it got and what it needs.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        if len(self.problems) == 1:
            message = f"invalid backpressure configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = (
                f"invalid backpressure configuration ({len(self.problems)} problems):\n{lines}"
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # args holds the message; rebuilding from it would split it into characters.
        return (type(self), (self.problems,))


class LimiterStateError(BackpressureClientError, RuntimeError):
    """The limiter was used in a state that does not allow it (not started, closed)."""


class BackpressureError(BackpressureClientError):
    """A request was not admitted: the congestion window is full.

    Catch this class to handle every rejection; the subclasses tell why a
    *waiting* caller gave up.

    :ivar window: the window size when the request was turned away (requests).
    :ivar in_flight: the requests in flight at that moment.
    :ivar firing: the names of the signals firing at that moment.
    :ivar retry_after: a hint, in seconds, for when to try again, or ``None``.
    :ivar limiter: the name of the limiter that rejected the request.
    """

    reason = "window full"

    def __init__(
        self,
        *,
        window: int,
        in_flight: int,
        firing: Sequence[str] = (),
        retry_after: float | None = None,
        limiter: str = "default",
    ) -> None:
        self.window = window
        self.in_flight = in_flight
        self.firing: tuple[str, ...] = tuple(firing)
        self.retry_after = retry_after
        self.limiter = limiter
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"backpressure: {self.reason} ({self.in_flight}/{self.window} in flight"]
        parts.append(f", limiter {self.limiter!r})")
        if self.firing:
            parts.append(f"; firing: {', '.join(self.firing)}")
        if self.retry_after is not None:
            parts.append(f"; retry after {_seconds(self.retry_after)} s")
        return "".join(parts)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructor: pickle through a helper so the error
        # survives process pools (batch jobs).
        return (
            _rebuild,
            (type(self), self.window, self.in_flight, self.firing, self.retry_after, self.limiter),
        )


def _seconds(value: float) -> str:
    # Three significant digits, without switching to 1.23e+04 for long hints.
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _rebuild(
    cls: type[BackpressureError],
    window: int,
    in_flight: int,
    firing: tuple[str, ...],
    retry_after: float | None,
    limiter: str,
) -> BackpressureError:
    return cls(
        window=window, in_flight=in_flight, firing=firing, retry_after=retry_after, limiter=limiter
    )


class WaitTimeoutError(BackpressureError):
    """A caller waited for a slot for its whole timeout and none came free."""

    reason = "no slot within the wait timeout"


class QueueFullError(BackpressureError):
    """A caller asked to wait, but the wait queue already holds ``max_waiters`` callers."""

    reason = "wait queue full"
