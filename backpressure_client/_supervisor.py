"""Starts and stops a limiter's signal pollers.

PLACEHOLDER until the signals issue lands: no signals are polled yet.  The
interface below is what the limiter relies on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._limiter import Backpressure

__all__ = ["Signal", "Supervisor"]

#: A backpressure signal (the protocol is defined by the signals issue).
Signal = Any


class Supervisor:
    """Owns a limiter's signal pollers (threads or anyio tasks)."""

    def __init__(self, limiter: Backpressure, signals: Sequence[Signal]) -> None:
        self._limiter = limiter
        self._signals = tuple(signals)
        if self._signals or limiter.config.backpressure_queries:
            raise NotImplementedError("signals are not implemented yet")

    @property
    def needs_start(self) -> bool:
        """Whether the limiter must be started before it admits requests."""
        return bool(self._signals)

    def start(self) -> None:
        """Start pollers in threads (idempotent)."""

    async def astart(self) -> None:
        """Start pollers as anyio tasks (idempotent)."""

    def stop(self) -> None:
        """Stop the pollers promptly (idempotent)."""

    async def astop(self) -> None:
        """Async :meth:`stop`."""
