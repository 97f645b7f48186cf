"""The scenarios and the policies compared in them.

All figures are fixed here, before any policy runs, and every policy sees
the same arrivals and the same service times (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backpressure_client import WindowPolicy

from ._gates import PolicySpec
from ._prometheus import MonitoringParams
from ._service import ServiceParams

__all__ = [
    "ClientParams",
    "Scenario",
    "default_policies",
    "default_scenarios",
]


@dataclass(frozen=True)
class ClientParams:
    """The clients' side.

    :param window_min: ``congestion_window_min`` (the library's default: 10).
    :param window_max: ``congestion_window_max`` (the library's default: 100).
    :param timeout: the client's request timeout, in seconds (T).
    """

    window_min: int = 10
    window_max: int = 100
    timeout: float = 1.0


@dataclass(frozen=True)
class Scenario:
    """One load pattern against one service.

    :param key: a short identifier (file names).
    :param title: the heading in the report.
    :param description: one sentence on what happens.
    :param duration: seconds of virtual time.
    :param measure: the ``[start, end)`` interval, in seconds, whose requests
        the figures count (the warm-up before it is left out).
    :param clients: clients sharing the service, each with its own gate.
    :param arrivals: ``(from time, requests per second summed over all
        clients)`` steps; open-loop Poisson arrivals, split evenly.
    :param capacity: ``(from time, workers)`` steps of the service.
    :param recovery_from: the time capacity returns, when it does (seconds).
    """

    key: str
    title: str
    description: str
    duration: float
    measure: tuple[float, float]
    clients: int
    arrivals: tuple[tuple[float, float], ...]
    capacity: tuple[tuple[float, int], ...]
    recovery_from: float | None = None
    service: ServiceParams = field(default_factory=ServiceParams)
    monitoring: MonitoringParams = field(default_factory=MonitoringParams)
    client: ClientParams = field(default_factory=ClientParams)


def default_scenarios(quick: bool = False) -> list[Scenario]:
    """The four scenarios of the report; *quick* shortens every phase for a smoke run."""
    service = ServiceParams()
    c = service.workers
    rate = service.throughput  # C / L requests per second
    if quick:
        steady, warm = 40.0, 10.0
        dip_at, back_at, end = 20.0, 40.0, 90.0
        idle, burst, after = 20.0, 5.0, 10.0
    else:
        steady, warm = 300.0, 30.0
        dip_at, back_at, end = 90.0, 180.0, 360.0
        idle, burst, after = 120.0, 10.0, 50.0
    return [
        Scenario(
            key="steady",
            title="Steady 3x overload",
            description=(
                f"one client sends {3 * rate:g} req/s (3x capacity) for {steady:g} s; "
                f"figures from {warm:g} s on"
            ),
            duration=steady,
            measure=(warm, steady),
            clients=1,
            arrivals=((0.0, 3 * rate),),
            capacity=((0.0, c),),
        ),
        Scenario(
            key="halving",
            title="Capacity halves, then comes back",
            description=(
                f"one client sends {1.5 * rate:g} req/s (1.5x capacity, 3x while halved); "
                f"half the workers are gone from {dip_at:g} s to {back_at:g} s; "
                f"figures from {warm:g} s on"
            ),
            duration=end,
            measure=(warm, end),
            clients=1,
            arrivals=((0.0, 1.5 * rate),),
            capacity=((0.0, c), (dip_at, c // 2), (back_at, c)),
            recovery_from=back_at,
        ),
        Scenario(
            key="burst",
            title="Burst after an idle period",
            description=(
                f"one client trickles {0.1 * rate:g} req/s (10% of capacity) for {idle:g} s, "
                f"then bursts {5 * rate:g} req/s (5x) for {burst:g} s, then trickles again; "
                f"figures from the burst's start to {burst + after / 2:g} s after it"
            ),
            duration=idle + burst + after,
            measure=(idle, idle + burst + after / 2),
            clients=1,
            arrivals=((0.0, 0.1 * rate), (idle, 5 * rate), (idle + burst, 0.1 * rate)),
            capacity=((0.0, c),),
        ),
        Scenario(
            key="clients",
            title="Four clients share the service",
            description=(
                f"four clients, each with its own window, send {0.75 * rate:g} req/s each "
                f"(3x capacity in total) for {steady:g} s; figures from {warm:g} s on"
            ),
            duration=steady,
            measure=(warm, steady),
            clients=4,
            arrivals=((0.0, 3 * rate),),
            capacity=((0.0, c),),
        ),
    ]


def default_policies() -> list[PolicySpec]:
    """The policies side by side: the baselines, the seed, the defaults two ways."""
    return [
        PolicySpec("none", "no limiter", "none"),
        PolicySpec("oracle", "oracle: static limit = capacity", "oracle"),
        PolicySpec("seed", "seed AIMD + Prometheus", "window", WindowPolicy.seed()),
        PolicySpec(
            "signals-only",
            "defaults, Prometheus only",
            "window",
            WindowPolicy(),
            local_drops=False,
        ),
        PolicySpec("defaults", "defaults, Prometheus + local 429/503", "window", WindowPolicy()),
        PolicySpec(
            "local-only",
            "defaults, local 429/503 only",
            "window",
            WindowPolicy(),
            signals=False,
        ),
    ]
