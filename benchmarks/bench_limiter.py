"""Admit+release cost of the limiter against the standard library's semaphores.

Run: ``python benchmarks/bench_limiter.py [--rounds N] [--ops N]``

Sync: ``limiter.try_acquire()`` + ``permit.release()`` against
``threading.Semaphore.acquire()`` + ``release()``.  Async (free slot):
``await limiter.aacquire()`` + ``permit.release()`` against
``await asyncio.Semaphore.acquire()`` + ``release()``.  Both sides run
interleaved in the same process, several rounds; the ratio of the best
rounds is printed (the machine is shared and noisy; the minimum is the
least disturbed measure).  Targets: sync <= 1.5x, async <= 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

from backpressure_client import Backpressure, BackpressureConfig


def _limiter() -> Backpressure:
    # A window that never fills: measures the free-slot path, default policy.
    # No registry: metrics read stats() at scrape time, not on this path, and
    # one limiter per round must not collide in the global registry.
    return Backpressure(
        BackpressureConfig(congestion_window_min=1000, congestion_window_max=1000), registry=None
    )


def sync_semaphore(ops: int) -> float:
    sem = threading.Semaphore(1000)
    acquire, release = sem.acquire, sem.release
    t0 = time.perf_counter()
    for _ in range(ops):
        acquire()
        release()
    return time.perf_counter() - t0


def sync_limiter(ops: int) -> float:
    bp = _limiter()
    try_acquire = bp.try_acquire
    t0 = time.perf_counter()
    for _ in range(ops):
        try_acquire().release()
    return time.perf_counter() - t0


async def async_semaphore(ops: int) -> float:
    sem = asyncio.Semaphore(1000)
    t0 = time.perf_counter()
    for _ in range(ops):
        await sem.acquire()
        sem.release()
    return time.perf_counter() - t0


async def async_limiter(ops: int) -> float:
    bp = _limiter()
    aacquire = bp.aacquire
    t0 = time.perf_counter()
    for _ in range(ops):
        (await aacquire()).release()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--ops", type=int, default=100_000, help="operations per round")
    args = parser.parse_args()
    best: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(args.rounds):
        record("threading.Semaphore", sync_semaphore(args.ops))
        record("Backpressure sync", sync_limiter(args.ops))
        record("asyncio.Semaphore", asyncio.run(async_semaphore(args.ops)))
        record("Backpressure async", asyncio.run(async_limiter(args.ops)))

    ns = {k: v / args.ops * 1e9 for k, v in best.items()}
    print(f"admit+release, best of {args.rounds} rounds x {args.ops} ops (ns per op)")
    for name, value in ns.items():
        print(f"  {name:<22} {value:8.0f} ns")
    sync_ratio = ns["Backpressure sync"] / ns["threading.Semaphore"]
    async_ratio = ns["Backpressure async"] / ns["asyncio.Semaphore"]
    print(f"sync  ratio (limiter / threading.Semaphore): {sync_ratio:.2f}x  (target <= 1.5x)")
    print(f"async ratio (limiter / asyncio.Semaphore):   {async_ratio:.2f}x  (target <= 2x)")


if __name__ == "__main__":
    main()
