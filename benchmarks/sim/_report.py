"""Figures and tables: per-scenario comparisons, recovery times, the issue's targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._engine import RunResult
from ._scenarios import Scenario

__all__ = [
    "RECOVERY_HOLD",
    "RECOVERY_SHARE",
    "RECOVERY_SMOOTHING",
    "Row",
    "TargetCheck",
    "markdown_table",
    "recovery_time",
    "rows_for",
    "target_checks",
]

#: recovered means the goodput reaches this share of the oracle's ...
RECOVERY_SHARE = 0.9
#: ... averaged over this many seconds ...
RECOVERY_SMOOTHING = 5
#: ... and stays there for this many seconds.
RECOVERY_HOLD = 30


def recovery_time(
    bins: Sequence[int], oracle_bins: Sequence[int], start: float, end: float
) -> float | None:
    """Seconds after *start* until the goodput recovers, or ``None`` if it does not.

    The reference is the oracle's mean goodput over ``[start, end)``.  The
    run has recovered at ``start + k`` (whole seconds) when the goodput
    averaged over ``[t, t + RECOVERY_SMOOTHING)`` is at least
    ``RECOVERY_SHARE`` of the reference for every ``t`` from ``start + k`` to
    ``start + k + RECOVERY_HOLD``.
    """
    s, e = int(start), int(end)
    if e - s < RECOVERY_SMOOTHING:
        return None
    reference = sum(oracle_bins[s:e]) / (e - s)
    threshold = RECOVERY_SHARE * reference * RECOVERY_SMOOTHING
    last = e - RECOVERY_SMOOTHING  # the last start of a whole smoothing window
    good = [sum(bins[t : t + RECOVERY_SMOOTHING]) >= threshold for t in range(s, last + 1)]
    for k in range(len(good) - RECOVERY_HOLD):
        if all(good[k : k + RECOVERY_HOLD + 1]):
            return float(k)
    return None


@dataclass(frozen=True)
class Row:
    """One policy's figures in one scenario."""

    policy: str
    label: str
    goodput: float
    goodput_share: float
    wasted_share: float
    failed: int
    timeouts: int
    rejected_share: float
    p50: float
    p99: float
    p99_ratio: float
    recovery: float | None
    recovery_applies: bool
    per_client: tuple[float, ...]


def rows_for(scenario: Scenario, results: Sequence[RunResult], labels: dict[str, str]) -> list[Row]:
    """The table rows of *scenario*, one per result; the ``oracle`` run is the baseline."""
    oracle = next(r for r in results if r.policy == "oracle")
    rows = []
    for r in results:
        recovery = None
        if scenario.recovery_from is not None:
            recovery = recovery_time(
                r.goodput_bins, oracle.goodput_bins, scenario.recovery_from, scenario.duration
            )
        rows.append(
            Row(
                policy=r.policy,
                label=labels.get(r.policy, r.policy),
                goodput=r.goodput,
                goodput_share=r.goodput / oracle.goodput if oracle.goodput else math.nan,
                wasted_share=r.wasted_share,
                failed=r.errors + r.timeouts,
                timeouts=r.timeouts,
                rejected_share=r.rejected_share,
                p50=r.percentile(50),
                p99=r.percentile(99),
                p99_ratio=r.percentile(99) / oracle.percentile(99),
                recovery=recovery,
                recovery_applies=scenario.recovery_from is not None,
                per_client=tuple(ok / r.measure_seconds for ok in r.per_client_ok),
            )
        )
    return rows


def _recovery_text(row: Row, scenario: Scenario) -> str:
    if not row.recovery_applies:
        return "-"
    if row.recovery is None:
        assert scenario.recovery_from is not None
        return f"none in {scenario.duration - scenario.recovery_from:g} s"
    cadences = row.recovery / scenario.monitoring.cadence
    return f"{row.recovery:g} s ({cadences:.1f} cad.)"


def markdown_table(scenario: Scenario, rows: Sequence[Row]) -> str:
    """The scenario's comparison as a Markdown table."""
    header = [
        "policy",
        "goodput req/s",
        "vs oracle",
        "wasted",
        "503/timeout",
        "rejected",
        "p50 ms",
        "p99 ms",
        "p99 vs oracle",
    ]
    if scenario.recovery_from is not None:
        header.append("recovery")
    if scenario.clients > 1:
        header.append("per-client req/s min-max")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * 8) + "|"]
    if scenario.recovery_from is not None:
        lines[1] += "--:|"
    if scenario.clients > 1:
        lines[1] += "--:|"
    for row in rows:
        cells = [
            row.label,
            f"{row.goodput:.1f}",
            f"{100 * row.goodput_share:.1f}%",
            f"{100 * row.wasted_share:.2f}%",
            f"{row.failed - row.timeouts}/{row.timeouts}",
            f"{100 * row.rejected_share:.1f}%",
            f"{1000 * row.p50:.0f}",
            f"{1000 * row.p99:.0f}",
            f"{row.p99_ratio:.2f}x",
        ]
        if scenario.recovery_from is not None:
            cells.append(_recovery_text(row, scenario))
        if scenario.clients > 1:
            cells.append(f"{min(row.per_client):.0f}-{max(row.per_client):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets, measured."""

    target: str
    measured: str
    met: bool
    margin: str


def target_checks(
    rows_by_scenario: dict[str, list[Row]], scenarios: dict[str, Scenario], policy: str
) -> list[TargetCheck]:
    """The issue's targets for *policy* (the project's defaults)."""
    checks: list[TargetCheck] = []
    steady = next((r for r in rows_by_scenario.get("steady", []) if r.policy == policy), None)
    if steady is not None:
        share = steady.goodput_share
        checks.append(
            TargetCheck(
                "steady 3x: goodput >= 95% of the oracle's",
                f"{100 * share:.1f}%",
                share >= 0.95,
                f"{100 * (share - 0.95):+.1f} points",
            )
        )
        waste = steady.wasted_share
        checks.append(
            TargetCheck(
                "steady 3x: wasted load <= 1%",
                f"{100 * waste:.2f}%",
                waste <= 0.01,
                f"{100 * (0.01 - waste):+.2f} points",
            )
        )
        ratio = steady.p99_ratio
        checks.append(
            TargetCheck(
                "steady 3x: p99 <= 1.5x the oracle's",
                f"{ratio:.2f}x",
                ratio <= 1.5,
                f"{1.5 - ratio:+.2f}x",
            )
        )
    halving = next((r for r in rows_by_scenario.get("halving", []) if r.policy == policy), None)
    if halving is not None:
        cadence = scenarios["halving"].monitoring.cadence
        limit = 10 * cadence
        if halving.recovery is None:
            measured, met, margin = "never", False, "-"
        else:
            measured = f"{halving.recovery:g} s = {halving.recovery / cadence:.1f} cadences"
            met = halving.recovery <= limit
            margin = f"{(limit - halving.recovery) / cadence:+.1f} cadences"
        checks.append(
            TargetCheck(
                "capacity returns: 90% of the oracle's goodput within 10 cadences",
                measured,
                met,
                margin,
            )
        )
    return checks
