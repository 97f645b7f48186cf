"""What stands between a client and the service: the policies under comparison.

Every policy is a *gate* with the same small interface, so the event loop
treats them alike.  :class:`LimiterGate` drives the project's real
:class:`~backpressure_client.Backpressure` (``try_acquire``,
``Permit.release``, ``report_signal``) on the simulation's
:class:`~backpressure_client.ManualClock`; the two baselines are a few lines
each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    ManualClock,
    Outcome,
    Permit,
    WindowPolicy,
)

__all__ = ["Gate", "LimiterGate", "OpenGate", "PolicySpec", "StaticGate", "classify"]

GateKind = Literal["none", "oracle", "window"]


@dataclass(frozen=True)
class PolicySpec:
    """One policy of the comparison.

    :param key: a short identifier (command line, file names).
    :param label: the name shown in the tables.
    :param kind: ``none`` (no limiter), ``oracle`` (a static limit at the
        service's true capacity) or ``window`` (the project's limiter).
    :param window_policy: the window's :class:`WindowPolicy`.
    :param local_drops: classify 429/503 and timeouts as ``dropped``, as the
        project's transport does; off, every answer counts as ``success``
        (the limiter hears about overload only through the signals).
    :param signals: report the Prometheus queries' readings to the limiter.
    """

    key: str
    label: str
    kind: GateKind
    window_policy: WindowPolicy | None = None
    local_drops: bool = True
    signals: bool = True


def classify(status: int | None, *, local_drops: bool) -> Outcome:
    """The outcome the transport reports for a response *status* (``None``: timed out).

    Mirrors the project's transport classifier: 2xx, 3xx and 4xx are
    ``success`` except 429 and 503, which are ``dropped``, as are timeouts.
    Without *local_drops* everything is ``success``.
    """
    if not local_drops:
        return Outcome.SUCCESS
    if status is None or status in (429, 503):
        return Outcome.DROPPED
    if status < 500:
        return Outcome.SUCCESS
    # Other 5xx: the transport's classifier treats them as no evidence.
    return Outcome.IGNORED


class Gate:
    """Admits requests for one client (base class: the interface)."""

    def admit(self) -> object | None:
        """A token for an admitted request, or ``None`` when it is turned away."""
        raise NotImplementedError

    def release(self, token: object, outcome: Outcome, latency: float) -> None:
        """The request holding *token* ended with *outcome* after *latency* seconds."""

    def report(self, name: str, firing: bool) -> None:
        """A fresh reading of signal *name*."""

    def set_capacity(self, limit: int) -> None:
        """The service's capacity share of this client changed (only the oracle knows)."""

    @property
    def window(self) -> int | None:
        """The current limit in requests, or ``None`` when there is none."""
        return None

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet ended."""
        raise NotImplementedError

    @property
    def firing(self) -> bool:
        """Whether any signal fires for this client now."""
        return False


class OpenGate(Gate):
    """No limiter: every request goes through."""

    def __init__(self) -> None:
        self._in_flight = 0

    def admit(self) -> object | None:
        """Always admits."""
        self._in_flight += 1
        return True

    def release(self, token: object, outcome: Outcome, latency: float) -> None:
        """Forget the request."""
        self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Requests in flight."""
        return self._in_flight


class StaticGate(Gate):
    """The oracle: a fixed limit equal to the client's share of the true capacity."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0

    def admit(self) -> object | None:
        """Admit while fewer than ``limit`` requests are in flight."""
        if self._in_flight >= self.limit:
            return None
        self._in_flight += 1
        return True

    def release(self, token: object, outcome: Outcome, latency: float) -> None:
        """Free the slot."""
        self._in_flight -= 1

    def set_capacity(self, limit: int) -> None:
        """Follow the true capacity at once."""
        self.limit = limit

    @property
    def window(self) -> int | None:
        """The static limit."""
        return self.limit

    @property
    def in_flight(self) -> int:
        """Requests in flight."""
        return self._in_flight


class LimiterGate(Gate):
    """The project's limiter, unmodified, on virtual time.

    :param config: the limiter's configuration (window range and policy).
    :param clock: the simulation's clock.
    :param name: the limiter's name.
    """

    def __init__(self, config: BackpressureConfig, clock: ManualClock, name: str) -> None:
        self.limiter = Backpressure(config, name=name, clock=clock, registry=None)
        self._try_acquire = self.limiter.try_acquire

    def admit(self) -> object | None:
        """``try_acquire()``; a :class:`BackpressureError` is a rejection (never retried)."""
        try:
            return self._try_acquire()
        except BackpressureError:
            return None

    def release(self, token: object, outcome: Outcome, latency: float) -> None:
        """``Permit.release(outcome, latency=...)``."""
        assert isinstance(token, Permit)
        token.release(outcome, latency=latency)

    def report(self, name: str, firing: bool) -> None:
        """``report_signal(name, firing=...)``, as a signal poller does."""
        self.limiter.report_signal(name, firing=firing)

    @property
    def window(self) -> int | None:
        """The congestion window."""
        return self.limiter.window

    @property
    def in_flight(self) -> int:
        """The limiter's in-flight count."""
        return self.limiter.in_flight

    @property
    def firing(self) -> bool:
        """Whether the limiter has a firing signal on its board."""
        return bool(self.limiter.firing)
