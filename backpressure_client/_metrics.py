"""The limiter's own metrics (PLACEHOLDER until the metrics issue lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from ._limiter import Backpressure

__all__ = ["register_limiter"]


def register_limiter(limiter: Backpressure, registry: CollectorRegistry) -> None:
    """Expose *limiter*'s metrics through *registry* (not implemented yet)."""
