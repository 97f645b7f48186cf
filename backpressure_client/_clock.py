"""Injectable time.

Everything in the package that reads the time reads it through a *clock*: a
zero-argument callable returning monotonic seconds as a ``float``.  The default
is :func:`time.monotonic`; tests and simulations pass a :class:`ManualClock` so
that virtual time only moves when they say so.

Blocking waits (a thread or task waiting for a slot, a poller waiting for its
next cadence) still sleep in real time: an OS wait cannot be driven by a
virtual clock.  Code that must be deterministic drives the limiter without
waiting (``try_acquire``) and advances the clock itself.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "monotonic"]

#: A clock: returns monotonic seconds.
Clock = Callable[[], float]

monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that moves only when told to.

    :param start: the initial reading, in seconds.

    Calling the instance returns the current virtual time.  It is safe to read
    and advance from several threads.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"start={start!r}: must be a finite number of seconds")
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by *seconds* (>= 0) and return the new time.

        :raises ValueError: if *seconds* is negative or not finite.
        """
        if not math.isfinite(seconds):
            raise ValueError(f"advance({seconds!r}): must be a finite number of seconds")
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to *now* seconds; it must not be earlier than the current time.

        :raises ValueError: if *now* is earlier than the current reading or not finite.
        """
        if not math.isfinite(now):
            raise ValueError(f"set({now!r}): must be a finite number of seconds")
        with self._lock:
            if now < self._now:
                raise ValueError(f"a clock cannot go back: set({now!r}) < {self._now!r}")
            self._now = float(now)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
