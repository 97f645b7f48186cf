"""Control-quality simulation: the project's limiter against the alternatives, side by side.

Run from the repository root::

    python benchmarks/simulate.py            # full run; rewrites benchmarks/README.md and plots
    python benchmarks/simulate.py --quick    # seconds-long smoke run; prints only
    python benchmarks/simulate.py --experiments  # candidate default policies, side by side

A deterministic discrete-event simulation on virtual time (no sleeps, no
threads) of open-loop clients, their limiters and one protected service that
queues beyond its capacity and answers 503 when its queue is full; signals
read the service's metrics through a modelled Prometheus (scrape interval,
``rate()`` window, query cadence).  The limiters are the project's real
:class:`backpressure_client.Backpressure`, driven through a ``ManualClock``.
See ``benchmarks/README.md`` for the model, the figures and what they mean.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from sim import (
    PolicySpec,
    RunResult,
    Scenario,
    default_policies,
    default_scenarios,
    make_signals,
    simulate,
)
from sim._experiments import candidate_policies
from sim._plots import plot_scenario, plots_available
from sim._report import (
    RECOVERY_HOLD,
    RECOVERY_SHARE,
    RECOVERY_SMOOTHING,
    Row,
    markdown_table,
    rows_for,
    target_checks,
)

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
DEFAULT_PLOTS = HERE / "plots"
BEGIN = "<!-- BEGIN simulate.py output: generated, do not edit by hand -->"
END = "<!-- END simulate.py output -->"
BEGIN_EXPERIMENTS = "<!-- BEGIN simulate.py --experiments output: generated -->"
END_EXPERIMENTS = "<!-- END simulate.py --experiments output -->"
#: the policy the issue's targets are about: the project's defaults as shipped.
TARGET_POLICY = "defaults"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/simulate.py",
        description=(
            "Deterministic simulation of the project's limiter against no limiter, an oracle "
            "static limit and the seed's AIMD, on virtual time."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short scenarios (a smoke run of a few seconds); implies --no-write",
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds arrivals and service times")
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the tables only: leave benchmarks/README.md and the plots alone",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write PNG plots into DIR (default when writing: benchmarks/plots)",
    )
    parser.add_argument(
        "--experiments",
        action="store_true",
        help=(
            "instead of the comparison, run candidate window policies (the knobs swept) "
            "against the targets"
        ),
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (default: CPUs, at most 4; 1 runs in this process)",
    )
    return parser.parse_args(argv)


def _run_all(
    scenarios: Sequence[Scenario], policies: Sequence[PolicySpec], seed: int, jobs: int
) -> dict[str, list[RunResult]]:
    pairs = [(sc, p) for sc in scenarios for p in policies]
    if jobs <= 1:
        results = [simulate(sc, p, seed) for sc, p in pairs]
    else:
        # Longest runs first; the results are put back in table order.
        order = sorted(
            range(len(pairs)),
            key=lambda i: -pairs[i][0].duration * max(r for _, r in pairs[i][0].arrivals),
        )
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures: dict[int, Future[RunResult]] = {
                i: pool.submit(simulate, pairs[i][0], pairs[i][1], seed) for i in order
            }
            results = [futures[i].result() for i in range(len(pairs))]
    by_scenario: dict[str, list[RunResult]] = {sc.key: [] for sc in scenarios}
    for (sc, _), result in zip(pairs, results, strict=True):
        by_scenario[sc.key].append(result)
    return by_scenario


def _model_text(scenario: Scenario) -> str:
    s, m, c = scenario.service, scenario.monitoring, scenario.client
    signals = "\n".join(f"  - `{sig.promql()}`" for sig in make_signals(scenario))
    return (
        f"- Service: C = {s.workers} workers, mean service time L = {1000 * s.base_latency:g} ms "
        f"(lognormal, sigma {s.latency_sigma:g}), capacity C/L = {s.throughput:g} req/s; "
        f"FIFO queue bounded at {s.queue_bound(s.workers)} requests (C x {s.queue_ratio:g}); "
        f"a request finding the queue full gets {s.reject_code} after "
        f"{1000 * s.reject_latency:g} ms; the service keeps serving requests whose client "
        f"has timed out.\n"
        f"- Clients: open-loop Poisson arrivals; limiter window "
        f"[{c.window_min}, {c.window_max}] (the library's defaults); timeout T = "
        f"{c.timeout:g} s; a rejected request (`BackpressureError`) is not retried.\n"
        f"- Monitoring: scrape every {m.scrape_interval:g} s (phase {m.scrape_offset:g} s), "
        f"`rate()` over {m.rate_window:g} s, each client evaluates its queries every "
        f"{m.cadence:g} s (the cadence), clients' phases spread over one cadence. "
        f"Queries (alerting-rule semantics):\n{signals}\n"
        f"- Outcomes as the transport classifies them: 2xx/3xx/4xx `success` except 429/503 "
        f"`dropped`; timeouts `dropped`. *Prometheus only* reports every answer as `success`.\n"
        f"- Figures: goodput = 200s received before the timeout, per second; wasted = "
        f"(503 + timeouts) / requests that reached the service; rejected = share of attempts "
        f"the limiter turned away; latencies of successful requests; recovery = seconds after "
        f"capacity returns until the {RECOVERY_SMOOTHING} s average goodput reaches "
        f"{100 * RECOVERY_SHARE:g}% of the oracle's mean and holds it for {RECOVERY_HOLD} s."
    )


def _report(
    command: str,
    seed: int,
    scenarios: Sequence[Scenario],
    policies: Sequence[PolicySpec],
    results: dict[str, list[RunResult]],
    elapsed: float,
) -> str:
    labels = {p.key: p.label for p in policies}
    rows: dict[str, list[Row]] = {sc.key: rows_for(sc, results[sc.key], labels) for sc in scenarios}
    out = [
        f"Command: `{command}` (seed {seed}; {elapsed:.0f} s wall on this machine).",
        "",
        _model_text(scenarios[0]),
        "",
    ]
    for sc in scenarios:
        out += [f"### {sc.title}", "", sc.description[0].upper() + sc.description[1:] + ".", ""]
        out += [markdown_table(sc, rows[sc.key]), ""]
    checks = target_checks(rows, {sc.key: sc for sc in scenarios}, TARGET_POLICY)
    if checks:
        out += [
            f"### Targets (the project's defaults: {labels[TARGET_POLICY]})",
            "",
            "| target | measured | met | margin |",
            "|---|--:|:-:|--:|",
        ]
        out += [
            f"| {c.target} | {c.measured} | {'yes' if c.met else '**no**'} | {c.margin} |"
            for c in checks
        ]
        out.append("")
    return "\n".join(out)


def _write_readme(heading: str, begin: str, end: str, section: str) -> None:
    """Replace the text between *begin* and *end* (or append it under *heading*)."""
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if README.exists():
        text = README.read_text(encoding="utf-8")
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1]
            README.write_text(head + block + tail, encoding="utf-8")
            return
        text = text.rstrip() + "\n\n"
    else:
        text = "# Benchmarks\n\n"
    README.write_text(text + f"## {heading}\n\n" + block + "\n", encoding="utf-8")


def _experiments_report(
    command: str,
    seed: int,
    scenarios: Sequence[Scenario],
    policies: Sequence[PolicySpec],
    results: dict[str, list[RunResult]],
    elapsed: float,
) -> str:
    labels = {p.key: p.label for p in policies}
    rows = {sc.key: rows_for(sc, results[sc.key], labels) for sc in scenarios}
    cadence = scenarios[0].monitoring.cadence
    out = [
        f"Command: `{command}` (seed {seed}; {elapsed:.0f} s wall on this machine). "
        "Same scenarios and signals as above; every candidate has the Prometheus "
        "signals and the local 429/503 signal. Bold: the issue's target is met.",
        "",
        "| candidate | steady goodput | steady wasted | steady p99 | recovery | "
        "burst goodput | burst wasted | 4 clients goodput | 4 clients wasted |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def bold(text: str, met: bool) -> str:
        return f"**{text}**" if met else text

    for i, policy in enumerate(policies):
        if policy.key == "oracle":
            continue
        steady, halving = rows["steady"][i], rows["halving"][i]
        burst, clients = rows["burst"][i], rows["clients"][i]
        if halving.recovery is None:
            recovery = "never"
        else:
            recovery = bold(
                f"{halving.recovery / cadence:.1f} cad.", halving.recovery <= 10 * cadence
            )
        cells = [
            policy.label,
            bold(f"{100 * steady.goodput_share:.1f}%", steady.goodput_share >= 0.95),
            bold(f"{100 * steady.wasted_share:.2f}%", steady.wasted_share <= 0.01),
            bold(f"{steady.p99_ratio:.2f}x", steady.p99_ratio <= 1.5),
            recovery,
            f"{100 * burst.goodput_share:.1f}%",
            f"{100 * burst.wasted_share:.2f}%",
            f"{100 * clients.goodput_share:.1f}%",
            f"{100 * clients.wasted_share:.2f}%",
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation, print the tables and (unless told not to) write them."""
    args = _parse(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "benchmarks/simulate.py", *raw])
    write = not (args.no_write or args.quick)
    plots_dir: Path | None = args.plots or (DEFAULT_PLOTS if write else None)

    scenarios = default_scenarios(quick=args.quick)
    policies = candidate_policies() if args.experiments else default_policies()
    started = time.perf_counter()
    results = _run_all(scenarios, policies, args.seed, args.jobs)
    elapsed = time.perf_counter() - started
    if args.experiments:
        section = _experiments_report(command, args.seed, scenarios, policies, results, elapsed)
        print(section)
        if write:
            _write_readme(
                "Candidate defaults (experiments)", BEGIN_EXPERIMENTS, END_EXPERIMENTS, section
            )
            print(f"wrote {README}")
        return 0
    section = _report(command, args.seed, scenarios, policies, results, elapsed)
    print(section)

    if plots_dir is not None:
        if plots_available():
            labels = {p.key: p.label for p in policies}
            for sc in scenarios:
                path = plots_dir / f"{sc.key}.png"
                plot_scenario(sc, results[sc.key], labels, path)
                print(f"wrote {path}")
        else:
            print(
                "plots skipped: matplotlib is not installed "
                "(pip install 'backpressure-client[plot]')"
            )
    if write:
        _write_readme("Control-quality simulation", BEGIN, END, section)
        print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
