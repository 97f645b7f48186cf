"""tenacity helpers: retry what the limiter turned away, when it says to.

Both helpers are ordinary tenacity strategies, so they work with
``tenacity.retry``, ``Retrying`` and ``AsyncRetrying`` alike (asyncio and trio)::

    @tenacity.retry(
        retry=retry_if_backpressure(),
        wait=wait_backpressure(),
        stop=tenacity.stop_after_attempt(5),
    )
    def fetch(client: httpx.Client, url: str) -> httpx.Response:
        return client.get(url)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import httpx
import tenacity
from tenacity import RetryCallState

from ._errors import BackpressureError
from ._transport import parse_retry_after

__all__ = ["retry_if_backpressure", "wait_backpressure"]


# Lower-case class names, as tenacity names its strategies: retry=retry_if_...()
class retry_if_backpressure(tenacity.retry_if_exception_type):
    """Retry an attempt a limiter turned away (:class:`~backpressure_client.BackpressureError`).

    Waiting callers that gave up (:class:`~backpressure_client.WaitTimeoutError`,
    :class:`~backpressure_client.QueueFullError`) are retried too.  A closed
    limiter (:class:`~backpressure_client.LimiterStateError`) is not: retrying
    cannot help.  Combine it with other predicates with ``|``::

        retry=retry_if_backpressure() | tenacity.retry_if_exception_type(httpx.ConnectError)
    """

    def __init__(self) -> None:
        super().__init__(BackpressureError)


class wait_backpressure(tenacity.wait.wait_base):
    """Wait as the service asked, else back off exponentially; with jitter either way.

    When the failed attempt carries a hint -- the ``retry_after`` of a
    :class:`~backpressure_client.BackpressureError` (set from a ``Retry-After``
    header the transport saw), or the ``Retry-After`` header of an
    :class:`httpx.HTTPStatusError`'s response -- the wait is that many seconds
    plus a random share of up to ``jitter`` of it, so that clients told the
    same deadline do not return at the same instant.

    Without a hint it backs off exponentially: ``initial * exp_base ** (n - 1)``
    seconds before retry *n* (capped at ``max_wait``), plus up to ``jitter`` of
    that, at random.  Pass *fallback* to use another tenacity wait strategy
    instead.

    :param initial: seconds before the first retry without a hint (> 0).
    :param exp_base: growth factor per retry without a hint (>= 1).
    :param jitter: the largest random share added to a wait, in [0, 1].
    :param max_wait: no wait is longer than this many seconds (> 0), hint or not.
    :param fallback: the wait strategy for attempts without a hint.
    :param rng: the random source (``random.Random``); seed one for reproducible waits.
    :raises ValueError: for an out-of-range parameter.
    """

    def __init__(
        self,
        *,
        initial: float = 0.1,
        exp_base: float = 2.0,
        jitter: float = 0.2,
        max_wait: float = 60.0,
        fallback: Callable[[RetryCallState], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        problems = []
        if not _finite(initial) or initial <= 0:
            problems.append(f"initial={initial!r}: must be a number of seconds > 0")
        if not _finite(exp_base) or exp_base < 1:
            problems.append(f"exp_base={exp_base!r}: must be a number >= 1")
        if not _finite(jitter) or not 0 <= jitter <= 1:
            problems.append(f"jitter={jitter!r}: must be a share in [0, 1]")
        if not _finite(max_wait) or max_wait <= 0:
            problems.append(f"max_wait={max_wait!r}: must be a number of seconds > 0")
        if problems:
            raise ValueError("wait_backpressure: " + "; ".join(problems))
        self.initial = float(initial)
        self.exp_base = float(exp_base)
        self.jitter = float(jitter)
        self.max_wait = float(max_wait)
        self.fallback = fallback
        self._random = (rng or random.Random()).random

    def __call__(self, retry_state: RetryCallState) -> float:
        """Seconds to sleep before the next attempt."""
        hint = _hint(retry_state)
        if hint is not None:
            base = hint
        elif self.fallback is not None:
            return min(self.max_wait, max(0.0, float(self.fallback(retry_state))))
        else:
            retries = max(0, retry_state.attempt_number - 1)
            # min() first: exp_base ** retries overflows long before it matters.
            exponent = min(retries, 1024)
            try:
                base = self.initial * self.exp_base**exponent
            except OverflowError:
                base = self.max_wait
        wait = base + base * self.jitter * self._random()
        return min(self.max_wait, wait)

    def __repr__(self) -> str:
        return (
            f"wait_backpressure(initial={self.initial!r}, exp_base={self.exp_base!r}, "
            f"jitter={self.jitter!r}, max_wait={self.max_wait!r})"
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hint(retry_state: RetryCallState) -> float | None:
    """The failed attempt's retry-after hint in seconds, if it has one."""
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    exc = outcome.exception()
    if isinstance(exc, BackpressureError):
        return exc.retry_after
    if isinstance(exc, httpx.HTTPStatusError):
        value = exc.response.headers.get("retry-after")
        if value is not None:
            return parse_retry_after(value)
    return None
