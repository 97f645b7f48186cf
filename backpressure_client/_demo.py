"""The demo: overload a real local service with and without the limiter.

``python -m backpressure_client demo`` (or ``backpressure-client demo``):

1. starts :class:`~backpressure_client._demo_backend.DemoBackend` on
   127.0.0.1: ``capacity`` workers, ``latency`` seconds per request, a short
   queue, then ``503``; it exposes ``/metrics``;
2. picks the signal: a real Prometheus (the ``prometheus`` binary on
   ``PATH``, scraping the service every second) queried with PromQL, or,
   without the binary, the service's ``/metrics`` read directly;
3. drives open-loop load at ``overload`` times the service's capacity for
   ``duration`` seconds through a plain ``httpx.AsyncClient``, then the same
   load through :class:`~backpressure_client.AsyncBackpressureTransport`;
4. prints live progress and a side-by-side table, and, when matplotlib is
   installed, writes a plot.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import anyio
import httpx

from ._config import BackpressureConfig
from ._demo_backend import DemoBackend
from ._errors import BackpressureError
from ._limiter import Backpressure
from ._promql import PromQLSignal
from ._promserver import PrometheusServer, find_prometheus
from ._scrape import ScrapeSignal
from ._signals import Signal
from ._transport import AsyncBackpressureTransport

__all__ = ["main", "run_demo"]

#: The backend's saturation, (in flight + queued) / capacity, above which the
#: signal fires: the queue nearly full, the step before the service sheds load.
SATURATION_THRESHOLD = 1.8


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs (see ``--help``)."""

    capacity: int = 10
    latency: float = 0.1
    overload: float = 3.0
    duration: float = 12.0
    timeout: float = 1.0
    window_min: int = 2
    window_max: int = 60
    signal: str = "auto"
    plot: Path | None = Path("backpressure-demo.png")
    seed: int = 1

    @property
    def rate(self) -> float:
        """Requests per second the load generator sends."""
        return self.overload * self.capacity / self.latency


@dataclass
class Phase:
    """What one run of the load saw."""

    name: str
    sent: int = 0
    ok: int = 0
    unavailable: int = 0
    timeouts: int = 0
    errors: int = 0
    rejected: int = 0
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    #: one row a second: (t, window or None, in flight, successes that second)
    series: list[tuple[float, int | None, int, int]] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """The *p*-th percentile of successful latencies, in seconds (NaN if none)."""
        if not self.latencies:
            return math.nan
        data = sorted(self.latencies)
        return data[max(0, math.ceil(p / 100 * len(data)) - 1)]


async def _drive(
    client: httpx.AsyncClient,
    url: str,
    phase: Phase,
    options: DemoOptions,
    limiter: Backpressure | None,
    out: TextIO,
) -> None:
    rng = random.Random(options.seed)
    started = anyio.current_time()
    # Goodput counts the successes that complete while the load runs.
    end = started + options.duration

    async def one() -> None:
        phase.sent += 1
        phase.in_flight += 1
        start = anyio.current_time()
        response = None
        try:
            # The client's patience for the whole request (httpx's own
            # timeouts apply to each step separately).
            with anyio.move_on_after(options.timeout):
                response = await client.get(url)
        except BackpressureError:
            phase.rejected += 1
            return
        except httpx.HTTPError:
            phase.errors += 1
            return
        finally:
            phase.in_flight -= 1
        done = anyio.current_time()
        if response is None:
            phase.timeouts += 1
        elif response.status_code == 200:
            if done <= end:
                phase.ok += 1
            phase.latencies.append(done - start)
        elif response.status_code in (429, 503):
            phase.unavailable += 1
        else:
            phase.errors += 1

    async def report(started: float) -> None:
        last_ok = 0
        second = 0
        while started + second < end:
            second += 1
            await anyio.sleep_until(started + second)
            window = limiter.window if limiter is not None else None
            in_flight = limiter.in_flight if limiter is not None else phase.in_flight
            done = phase.ok - last_ok
            last_ok = phase.ok
            phase.series.append((float(second), window, in_flight, done))
            shown = f"window {window:3d}" if window is not None else "window   -"
            firing = " firing" if limiter is not None and limiter.firing else ""
            print(
                f"  [{phase.name:<13}] t={second:3d}s  {shown}  in flight {in_flight:3d}  "
                f"goodput {done:4d}/s  503s {phase.unavailable:5d}  "
                f"rejected {phase.rejected:5d}{firing}",
                file=out,
                flush=True,
            )

    async with anyio.create_task_group() as reporting:
        reporting.start_soon(report, started)
        # Leaving this block waits for the requests still in flight; each is
        # bounded by the client timeout.
        async with anyio.create_task_group() as requests:
            next_at = started
            while True:
                next_at += rng.expovariate(options.rate)
                if next_at >= end:
                    break
                await anyio.sleep_until(next_at)
                requests.start_soon(one)
        reporting.cancel_scope.cancel()


def _signal(backend: DemoBackend, prometheus: PrometheusServer | None) -> Signal:
    if prometheus is not None:
        return PromQLSignal(
            f"demo_backend_saturation > {SATURATION_THRESHOLD:g}",
            url=prometheus.url,
            name="saturation (PromQL)",
            cadence=1.0,
            timeout=0.5,
        )
    return ScrapeSignal(
        backend.url + "/metrics",
        "demo_backend_saturation",
        threshold=SATURATION_THRESHOLD,
        name="saturation (/metrics)",
        cadence=0.5,
        timeout=0.4,
    )


async def _run(options: DemoOptions, out: TextIO) -> list[Phase]:
    phases: list[Phase] = []
    with (
        DemoBackend(
            capacity=options.capacity, latency=options.latency, queue_limit=options.capacity
        ) as backend,
        tempfile.TemporaryDirectory(prefix="bp-demo-") as tmp,
    ):
        print(
            f"service: {backend.url}  capacity {options.capacity} x {options.latency * 1000:g} ms "
            f"= {options.capacity / options.latency:g} req/s, queue {options.capacity}, then 503",
            file=out,
        )
        prometheus: PrometheusServer | None = None
        binary = find_prometheus() if options.signal in ("auto", "prometheus") else None
        if options.signal == "prometheus" and binary is None:
            raise SystemExit("--signal prometheus: no prometheus binary on PATH")
        if binary is not None:
            port = backend.url.rsplit(":", 1)[1]
            prometheus = PrometheusServer(binary, Path(tmp), [f"127.0.0.1:{port}"])
            prometheus.start()
        try:
            signal = _signal(backend, prometheus)
            source = f"Prometheus at {prometheus.url}" if prometheus else "the service's /metrics"
            print(f"signal:  {signal.name} from {source}", file=out)
            print(
                f"load:    {options.rate:g} req/s ({options.overload:g}x capacity) for "
                f"{options.duration:g} s per phase, client timeout {options.timeout:g} s\n",
                file=out,
            )
            url = backend.url + "/work"
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)

            phase = Phase("no limiter")
            async with httpx.AsyncClient(limits=limits) as client:
                await _drive(client, url, phase, options, None, out)
            phases.append(phase)
            await anyio.sleep(1.0)  # let the service's queue drain

            config = BackpressureConfig(
                congestion_window_min=options.window_min,
                congestion_window_max=options.window_max,
                monitoring_cadence=1.0,
            )
            limiter = Backpressure(config, name="demo", signals=[signal], registry=None)
            transport = AsyncBackpressureTransport(limiter, httpx.AsyncHTTPTransport(limits=limits))
            phase = Phase("with limiter")
            async with limiter, httpx.AsyncClient(transport=transport) as client:
                await _drive(client, url, phase, options, limiter, out)
            phases.append(phase)
        finally:
            if prometheus is not None:
                prometheus.stop()
    return phases


def _table(phases: Sequence[Phase], options: DemoOptions) -> str:
    head = (
        "| run | sent | ok | goodput req/s | 503 | timeouts | rejected | wasted | p50 ms | p99 ms |"
    )
    rows = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for p in phases:
        reached = p.ok + p.unavailable + p.timeouts + p.errors
        wasted = (p.unavailable + p.timeouts) / reached if reached else 0.0
        rows.append(
            f"| {p.name} | {p.sent} | {p.ok} | {p.ok / options.duration:.1f} | {p.unavailable} "
            f"| {p.timeouts} | {p.rejected} | {wasted:.1%} | {p.percentile(50) * 1000:.0f} "
            f"| {p.percentile(99) * 1000:.0f} |"
        )
    return "\n".join(rows)


def _plot(phases: Sequence[Phase], options: DemoOptions, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for p in phases:
        t = [row[0] for row in p.series]
        top.plot(t, [row[2] for row in p.series], label=f"in flight, {p.name}")
        if p.series and p.series[0][1] is not None:
            top.plot(t, [row[1] for row in p.series], "--", label=f"window, {p.name}")
        bottom.plot(t, [row[3] for row in p.series], label=p.name)
    edge = 2 * options.capacity
    top.axhline(edge, color="grey", linewidth=0.8, label="503 edge (workers + queue)")
    top.set_ylabel("requests")
    top.legend(fontsize="small")
    bottom.axhline(options.capacity / options.latency, color="grey", linewidth=0.8)
    bottom.set_ylabel("goodput (req/s)")
    bottom.set_xlabel("seconds into the run")
    bottom.legend(fontsize="small")
    fig.suptitle(f"backpressure-client demo: {options.overload:g}x overload")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> list[Phase]:
    """Run the demo and print its progress and summary to *out*."""
    phases = anyio.run(_run, options, out)
    print("\n" + _table(phases, options), file=out)
    if options.plot is not None:
        if _plot(phases, options, options.plot):
            print(f"\nplot: {options.plot}", file=out)
        else:
            print("\nplot: skipped (install the 'plot' extra for matplotlib)", file=out)
    return phases


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to *parser*."""
    d = DemoOptions()
    parser.add_argument("--capacity", type=int, default=d.capacity, help="service workers")
    parser.add_argument(
        "--latency", type=float, default=d.latency, help="seconds of work per request"
    )
    parser.add_argument(
        "--overload", type=float, default=d.overload, help="load as a multiple of capacity"
    )
    parser.add_argument(
        "--duration", type=float, default=d.duration, help="seconds per run (two runs)"
    )
    parser.add_argument("--timeout", type=float, default=d.timeout, help="client timeout, s")
    parser.add_argument("--window-min", type=int, default=d.window_min)
    parser.add_argument("--window-max", type=int, default=d.window_max)
    parser.add_argument(
        "--signal",
        choices=("auto", "prometheus", "scrape"),
        default=d.signal,
        help="where the signal comes from: a real Prometheus, the service's /metrics, "
        "or auto (Prometheus when the binary is on PATH)",
    )
    parser.add_argument("--plot", type=Path, default=d.plot, help="PNG to write (needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true", help="do not write a plot")
    parser.add_argument("--seed", type=int, default=d.seed, help="arrival-time seed")


def options_from(args: argparse.Namespace) -> DemoOptions:
    """The :class:`DemoOptions` that parsed *args* ask for."""
    problems = [
        f"--{name} {getattr(args, name)}: must be > 0"
        for name in ("capacity", "latency", "overload", "duration", "timeout")
        if not getattr(args, name) > 0
    ]
    if not 1 <= args.window_min <= args.window_max:
        problems.append("--window-min and --window-max: need 1 <= min <= max")
    if problems:
        raise SystemExit("demo: " + "; ".join(problems))
    return DemoOptions(
        capacity=args.capacity,
        latency=args.latency,
        overload=args.overload,
        duration=args.duration,
        timeout=args.timeout,
        window_min=args.window_min,
        window_max=args.window_max,
        signal=args.signal,
        plot=None if args.no_plot else args.plot,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``backpressure-client demo``: see :mod:`backpressure_client._demo`."""
    parser = argparse.ArgumentParser(
        prog="backpressure-client",
        description="backpressure-client: client-side backpressure for Python.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="overload a local service with and without the limiter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_parser(demo)
    args = parser.parse_args(argv)
    run_demo(options_from(args))
    return 0
