"""PNG plots of the window, the requests in flight and the goodput over time.

matplotlib is optional (the ``plot`` extra): :func:`plots_available` says
whether it can be imported, and nothing else here is called without it.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path

from ._engine import RunResult
from ._scenarios import Scenario

__all__ = ["plot_scenario", "plots_available"]


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def _smooth(values: Sequence[int], width: int) -> list[float]:
    out: list[float] = []
    total = 0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def plot_scenario(
    scenario: Scenario,
    results: Sequence[RunResult],
    labels: dict[str, str],
    path: Path,
) -> None:
    """One PNG per scenario: a row per policy, window and in-flight left, goodput right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oracle = next(r for r in results if r.policy == "oracle")
    whole = int(scenario.duration)  # the last, partial second would read as a dip
    oracle_goodput = _smooth(oracle.goodput_bins[:whole], 5)
    n = len(results)
    fig, axes = plt.subplots(
        n, 2, figsize=(10, 1.55 * n + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    fig.suptitle(f"{scenario.title}: {scenario.description}", fontsize=8)
    bound = [
        c + scenario.service.queue_bound(c) for c in results[0].series.capacity
    ]  # requests the service holds before it answers 503
    for row, r in enumerate(results):
        s = r.series
        left, right = axes[row][0], axes[row][1]
        left.plot(s.times, s.capacity, color="0.4", lw=0.8, ls="--", label="capacity C")
        left.plot(s.times, bound, color="0.7", lw=0.8, ls=":", label="C + queue bound")
        left.plot(s.times, s.in_flight, color="tab:orange", lw=0.7, label="in flight")
        left.plot(s.times, s.window, color="tab:blue", lw=0.9, label="window")
        firing = [t for t, f in zip(s.times, s.firing, strict=True) if f]
        if firing:
            left.scatter(
                firing,
                [0] * len(firing),
                marker="|",
                s=12,
                color="tab:red",
                lw=0.6,
                label="signal firing",
            )
        left.text(
            0.01,
            0.96,
            labels.get(r.policy, r.policy),
            transform=left.transAxes,
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
        left.tick_params(labelsize=7)
        right.plot(oracle_goodput, color="0.6", lw=0.8, ls="--", label="oracle")
        right.plot(_smooth(r.goodput_bins[:whole], 5), color="tab:green", lw=0.9, label="goodput")
        right.set_ylim(bottom=0)
        right.tick_params(labelsize=7)
        if row == 0:
            left.set_title("window, in flight (requests; sums over clients)", fontsize=8)
            right.set_title("goodput (successful req/s, 5 s average)", fontsize=8)
            left.legend(fontsize=6, loc="upper right", ncol=5)
            right.legend(fontsize=6, loc="lower right")
    axes[-1][0].set_xlabel("virtual time (s)", fontsize=7)
    axes[-1][1].set_xlabel("virtual time (s)", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=64)
    plt.close(fig)
    # A 64-colour palette keeps the committed PNGs a third of their size.
    from PIL import Image

    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=64).save(path, optimize=True)
