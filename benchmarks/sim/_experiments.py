"""Candidate defaults: the window policy's knobs swept against the targets.

Every candidate runs the project's real limiter with a custom
:class:`WindowPolicy`; the first row is the policy the library ships.  The
per-round-trip increase with slow start (``increase_per="rtt"``,
``slow_start=True``) began here as a prototype and is now the default, so the
rows also show what the earlier per-success increase does.
"""

from __future__ import annotations

from backpressure_client import WindowPolicy

from ._gates import PolicySpec

__all__ = ["candidate_policies"]


def candidate_policies() -> list[PolicySpec]:
    """The defaults and single-knob and combined variants of them."""
    w = WindowPolicy()
    per_success = w.replace(increase_per="success")
    knobs: list[tuple[str, str, WindowPolicy]] = [
        ("defaults", "defaults (as shipped)", w),
        ("slow-start-off", "slow_start=False", w.replace(slow_start=False)),
        ("per-success", 'increase_per="success" (the earlier default)', per_success),
        ("f0.7", "decrease_factor=0.7", w.replace(decrease_factor=0.7)),
        ("f0.9", "decrease_factor=0.9", w.replace(decrease_factor=0.9)),
        ("u1", "min_utilisation=1.0", w.replace(min_utilisation=1.0)),
        ("rtt-off", "decrease_once_per_rtt=False", w.replace(decrease_once_per_rtt=False)),
        (
            "reading-off",
            "decrease_once_per_reading=False",
            w.replace(decrease_once_per_reading=False),
        ),
        (
            "per-success-f0.9",
            'increase_per="success", decrease_factor=0.9',
            per_success.replace(decrease_factor=0.9),
        ),
        (
            "per-success-f0.9-u1",
            'increase_per="success", decrease_factor=0.9, min_utilisation=1.0',
            per_success.replace(decrease_factor=0.9, min_utilisation=1.0),
        ),
    ]
    out = [PolicySpec("oracle", "oracle", "oracle")]
    out += [PolicySpec(key, label, "window", policy) for key, label, policy in knobs]
    return out
