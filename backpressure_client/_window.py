"""The congestion window: pure AIMD arithmetic, no locks, no I/O, no clock.

:class:`WindowPolicy` is the immutable description of *how* the window moves;
:class:`AIMDWindow` is the state it moves.  The limiter owns one window and
calls it under its own lock; the simulation calls it directly.

The seed design (``WindowPolicy.seed()``): the window starts at ``min``; every
completed request grows it by 1 while no signal fires and halves it while any
signal fires; it always stays within ``[min, max]``.

The defaults (``WindowPolicy()``) keep that additive-increase /
multiplicative-decrease shape and add three refinements, each one switchable:

``increase_per`` (default ``"rtt"``) and ``slow_start`` (default on)
    Grow by ``increase_step`` per *window's worth* of successes (once per
    round trip, TCP's congestion avoidance) instead of per success.  Growing
    per success doubles the window every round trip, so under steady
    overload it overshoots the service's capacity every few round trips and
    each overshoot costs a burst of 429/503s (which, seen by a Prometheus
    error-rate query, then halve the window again for minutes).  Until the
    window first shrinks it still grows per success (TCP's slow start), so a
    new client reaches its working size in a few round trips.
``min_utilisation`` (default 0.5)
    Grow only when the completing request was admitted while at least this
    share of the window was in use.  An idle or lightly used client otherwise
    drifts to ``max`` on its trickle of successes and then lets a burst of
    ``max`` requests through at once (Netflix concurrency-limits' AIMD rule).
``decrease_once_per_reading`` (default on)
    A firing signal halves the window once per *fresh firing reading*, not
    once per completion.  A signal is read once a cadence (a minute by
    default) while hundreds of requests complete in between; halving on each
    of them collapses the window to ``min`` within a few milliseconds of the
    first firing reading, whatever the size of the overload.
``decrease_once_per_rtt`` (default on)
    A dropped request (429, 503, timeout) shrinks the window at once, but
    drops of requests that were already in flight when the window last
    shrank do not shrink it again: they are echoes of the same congestion
    event (TCP's one-decrease-per-round-trip rule).
``react_to_drops`` (default on; off in the seed policy)
    Treat a ``dropped`` outcome as an overload signal of its own.  With it
    off, a dropped request counts as a completed one, as in the seed proxy.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Literal

__all__ = ["AIMDWindow", "Outcome", "WindowPolicy"]


class Outcome(str, Enum):
    """How a request ended, as far as the window is concerned."""

    #: The service handled it; counts towards growing the window.
    SUCCESS = "success"
    #: Evidence of overload (429, 503, a timeout); shrinks the window.
    DROPPED = "dropped"
    #: No evidence either way (a client-side error, a cancellation); no change.
    IGNORED = "ignored"


_SUCCESS = Outcome.SUCCESS
_DROPPED = Outcome.DROPPED
_IGNORED = Outcome.IGNORED
_NEVER = sys.maxsize

# Binary floats make ``90 * (1 - 0.3)`` come out as 62.999...; the window must
# follow the decimal arithmetic the configuration reads as (63), so products
# within this relative distance of an integer count as that integer.
_SLACK = 1e-9


def _floor(x: float) -> int:
    return math.floor(x + abs(x) * _SLACK)


def _ceil(x: float) -> int:
    return math.ceil(x - abs(x) * _SLACK)


@dataclass(frozen=True)
class WindowPolicy:
    """How the congestion window grows and shrinks.

    Immutable; use :meth:`replace` to derive a variant.

    :param increase_step: requests added to the window per qualifying success.
    :param decrease_factor: the window is multiplied by this on a decrease
        (``0 < f < 1``), rounded down, never below ``min``.
    :param min_utilisation: grow only when the completing request was
        admitted with at least ``min_utilisation * window`` requests in flight
        (itself included); ``0`` always grows.
    :param decrease_once_per_reading: a firing signal shrinks the window once
        per fresh firing reading instead of on every completion.
    :param decrease_once_per_rtt: drops of requests admitted before the last
        decrease do not shrink the window again.
    :param react_to_drops: a ``dropped`` outcome shrinks the window; when off
        it is handled like ``success``.
    :param increase_per: ``"success"``: every qualifying success adds
        ``increase_step``; ``"rtt"``: a window's worth of qualifying successes
        does (``size`` of them, i.e. about one round trip).
    :param slow_start: with ``increase_per="rtt"``, grow per success until
        the window first shrinks (from then on, per round trip).
    """

    increase_step: int = 1
    decrease_factor: float = 0.5
    min_utilisation: float = 0.5
    decrease_once_per_reading: bool = True
    decrease_once_per_rtt: bool = True
    react_to_drops: bool = True
    increase_per: Literal["success", "rtt"] = "rtt"
    slow_start: bool = True

    @classmethod
    def seed(cls) -> WindowPolicy:
        """The original design, exactly: +1 per success, halve per completion while firing."""
        return cls(
            increase_step=1,
            decrease_factor=0.5,
            min_utilisation=0.0,
            decrease_once_per_reading=False,
            decrease_once_per_rtt=False,
            react_to_drops=False,
            increase_per="success",
            slow_start=False,
        )

    def problems(self, prefix: str = "window_policy.") -> list[str]:
        """Every problem with this policy, one line each (empty when valid)."""
        out: list[str] = []
        step = self.increase_step
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            out.append(f"{prefix}increase_step={step!r}: must be an integer >= 1")
        f = self.decrease_factor
        if (
            isinstance(f, bool)
            or not isinstance(f, (int, float))
            or not math.isfinite(f)
            or not 0 < f < 1
        ):
            out.append(f"{prefix}decrease_factor={f!r}: must be a number with 0 < factor < 1")
        u = self.min_utilisation
        if (
            isinstance(u, bool)
            or not isinstance(u, (int, float))
            or not math.isfinite(u)
            or not 0 <= u <= 1
        ):
            out.append(f"{prefix}min_utilisation={u!r}: must be a number in [0, 1]")
        if self.increase_per not in ("success", "rtt"):
            out.append(f"{prefix}increase_per={self.increase_per!r}: must be 'success' or 'rtt'")
        for name in (
            "decrease_once_per_reading",
            "decrease_once_per_rtt",
            "react_to_drops",
            "slow_start",
        ):
            value = getattr(self, name)
            if not isinstance(value, bool):
                out.append(f"{prefix}{name}={value!r}: must be true or false")
        return out

    def replace(self, **changes: object) -> WindowPolicy:
        """A copy with *changes* applied."""
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]


class AIMDWindow:
    """The window's state and its pure transitions.

    Not thread-safe by design: the owner serialises calls.  Every method
    returns the new size.  ``seq`` numbers are admission sequence numbers
    handed out by the owner, strictly increasing; ``reading`` is a counter
    that the owner bumps on every fresh firing signal reading.

    :param minimum: the smallest window, in requests (>= 1).
    :param maximum: the largest window, in requests (>= minimum).
    :param policy: how the window moves.
    """

    __slots__ = (
        "_credit",
        "_decrease_reading",
        "_decrease_seq",
        "_per_success_below",
        "_step",
        "_utilisation",
        "cap",
        "grow_floor",
        "maximum",
        "minimum",
        "policy",
        "size",
    )

    def __init__(self, minimum: int, maximum: int, policy: WindowPolicy | None = None) -> None:
        if minimum < 1 or maximum < minimum:
            raise ValueError(f"need 1 <= minimum <= maximum, got [{minimum}, {maximum}]")
        self.policy = policy if policy is not None else WindowPolicy()
        self.minimum = minimum
        self.maximum = maximum
        #: the upper bound in force: ``maximum`` lowered by graded signals.
        self.cap = maximum
        #: the current window, in requests.
        self.size = minimum
        self._decrease_seq = -1
        self._decrease_reading = -1
        self._step = self.policy.increase_step
        self._utilisation = self.policy.min_utilisation
        # Successes counted towards the next per-round-trip increase.
        self._credit = 0
        # Below this size the window grows per success: everywhere for
        # increase_per="success"; until the first decrease with slow start.
        if self.policy.increase_per == "success":
            self._per_success_below = _NEVER
        elif self.policy.slow_start:
            self._per_success_below = maximum
        else:
            self._per_success_below = 0
        #: a quiet success admitted with fewer requests in flight than this
        #: leaves the window as it is; the owner may skip the call (hot path).
        self.grow_floor = 0
        self._update_floor()

    def on_completion(
        self,
        outcome: Outcome,
        seq: int,
        in_flight_at_admission: int,
        firing: bool,
        reading: int,
        next_seq: int,
    ) -> int:
        """Apply one completed request and return the new size.

        :param outcome: how the request ended.
        :param seq: the request's admission sequence number.
        :param in_flight_at_admission: requests in flight when it was
            admitted, itself included.
        :param firing: whether any signal fires now.
        :param reading: the current firing-reading counter.
        :param next_seq: the sequence number the next admission will get;
            recorded on a decrease so later drops can tell whether they were
            admitted before it.
        """
        if outcome.__class__ is not Outcome:
            outcome = Outcome(outcome)
        if outcome is _SUCCESS and not firing:
            return self.on_quiet_success(in_flight_at_admission)
        if outcome is _IGNORED:
            return self.size
        policy = self.policy
        if outcome is _DROPPED and policy.react_to_drops:
            if policy.decrease_once_per_rtt and seq < self._decrease_seq:
                return self.size
            return self._decrease(next_seq, reading)
        # A success while a signal fires, or a drop under a policy that does
        # not react to drops (handled as the seed handles any completion).
        if firing:
            if policy.decrease_once_per_reading and reading == self._decrease_reading:
                return self.size
            return self._decrease(next_seq, reading)
        return self.on_quiet_success(in_flight_at_admission)

    def on_quiet_success(self, in_flight_at_admission: int) -> int:
        """A success while no signal fires: the common case, kept cheap.

        Equivalent to ``on_completion(Outcome.SUCCESS, ..., firing=False, ...)``.
        """
        size = self.size
        # grow_floor is _NEVER at the cap: one comparison covers both rules.
        if in_flight_at_admission >= self.grow_floor:
            if size >= self._per_success_below:
                # Congestion avoidance: increase_step per `size` successes.
                credit = self._credit + self._step
                if credit < size:
                    self._credit = credit
                    return size
                self._credit = credit - size
                size += 1
            else:
                size += self._step
            self.size = size if size < self.cap else self.cap
            self._update_floor()
        return self.size

    def _update_floor(self) -> None:
        size = self.size
        self.grow_floor = _ceil(self._utilisation * size) if size < self.cap else _NEVER

    def _decrease(self, next_seq: int, reading: int) -> int:
        self._decrease_seq = next_seq
        self._decrease_reading = reading
        shrunk = _floor(self.size * self.policy.decrease_factor)
        self.size = max(self.minimum, min(self.cap, shrunk))
        self._credit = 0
        # The first decrease ends the slow start (TCP's ssthresh).
        if self._per_success_below != _NEVER:
            self._per_success_below = min(self._per_success_below, self.size)
        self._update_floor()
        return self.size

    def set_level(self, level: float) -> int:
        """Cap the window at ``floor(maximum * (1 - level))`` (never below minimum).

        *level* is the highest graded-signal level, in [0, 1]; 0 lifts the cap.
        Returns the new size, lowered at once when it is above the new cap.
        """
        level = min(1.0, max(0.0, level))
        # floor(max * (1 - level)) == max - ceil(max * level), and the latter
        # does not lose precision to 1 - level when the level is close to 1.
        self.cap = max(self.minimum, self.maximum - _ceil(self.maximum * level))
        if self.size > self.cap:
            self.size = self.cap
        self._update_floor()
        return self.size

    def __repr__(self) -> str:
        cap = f", cap={self.cap}" if self.cap != self.maximum else ""
        return f"AIMDWindow(size={self.size}, [{self.minimum}, {self.maximum}]{cap})"
