"""Cost of the limiting transport: ``httpx.Client`` with it against the bare inner transport.

Run: ``python benchmarks/bench_transport.py [--rounds N] [--requests N]``

Both clients send the same ``GET`` through an ``httpx.MockTransport`` (no
network, so the ratio isolates the transport's own cost: the worst case for
it); the limiting client wraps that same kind of inner transport in
``BackpressureTransport`` / ``AsyncBackpressureTransport`` over a limiter
whose window never fills.  Sync (``httpx.Client``) and async
(``httpx.AsyncClient`` on asyncio) are measured in the same process.

Each round times the bare and the limiting client back to back (the order
alternates between rounds; each timing starts from a collected heap after a
warm-up), so that a round's two figures share the machine's state.  Printed
per row: the per-request times of the best rounds, their ratio, and the
median of the per-round ratios (robust on a shared, noisy machine).
Target: <= 1.03.

Two bodies are measured:

``buffered``
    ``Response(content=...)``: the mock hands back a response already read
    and closed, so the slot is released when the transport returns.
``streamed``
    ``Response(stream=ByteStream(...))``: the body is read through the
    transport's releasing stream, as with a real network transport; the slot
    is released when the client closes the response.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable

import httpx

from backpressure_client import (
    AsyncBackpressureTransport,
    Backpressure,
    BackpressureConfig,
    BackpressureTransport,
)

URL = "http://bench.invalid/item"
BODY = b'{"ok": true}'
WARM_UP = 200
BODIES = ("buffered", "streamed")


def _handler(streamed: bool) -> Callable[[httpx.Request], httpx.Response]:
    if streamed:
        return lambda request: httpx.Response(200, stream=httpx.ByteStream(BODY))
    return lambda request: httpx.Response(200, content=BODY)


def _limiter() -> Backpressure:
    # A window that never fills: measures the admitted path.
    config = BackpressureConfig(congestion_window_min=1000, congestion_window_max=1000)
    return Backpressure(config, name="bench", registry=None)


def sync_clients(streamed: bool) -> tuple[httpx.Client, httpx.Client]:
    bare = httpx.MockTransport(_handler(streamed))
    limited = BackpressureTransport(_limiter(), httpx.MockTransport(_handler(streamed)))
    return httpx.Client(transport=bare), httpx.Client(transport=limited)


def async_clients(streamed: bool) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    bare = httpx.MockTransport(_handler(streamed))
    limited = AsyncBackpressureTransport(_limiter(), httpx.MockTransport(_handler(streamed)))
    return httpx.AsyncClient(transport=bare), httpx.AsyncClient(transport=limited)


def time_sync(client: httpx.Client, requests: int) -> float:
    get = client.get
    for _ in range(WARM_UP):
        get(URL)
    gc.collect()  # each timing pays for its own garbage only
    t0 = time.perf_counter()
    for _ in range(requests):
        get(URL)
    return time.perf_counter() - t0


async def time_async(client: httpx.AsyncClient, requests: int) -> float:
    get = client.get
    for _ in range(WARM_UP):
        await get(URL)
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(requests):
        await get(URL)
    return time.perf_counter() - t0


Timings = dict[tuple[str, str], list[tuple[float, float]]]


def run_sync(rounds: int, requests: int, out: Timings) -> None:
    for body in BODIES:
        bare, limited = sync_clients(body == "streamed")
        with bare, limited:
            for i in range(rounds):
                if i % 2:
                    b = time_sync(bare, requests)
                    lim = time_sync(limited, requests)
                else:
                    lim = time_sync(limited, requests)
                    b = time_sync(bare, requests)
                out.setdefault(("sync", body), []).append((b, lim))


async def run_async(rounds: int, requests: int, out: Timings) -> None:
    for body in BODIES:
        bare, limited = async_clients(body == "streamed")
        async with bare, limited:
            for i in range(rounds):
                if i % 2:
                    b = await time_async(bare, requests)
                    lim = await time_async(limited, requests)
                else:
                    lim = await time_async(limited, requests)
                    b = await time_async(bare, requests)
                out.setdefault(("async", body), []).append((b, lim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds (default 15)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per timing")
    args = parser.parse_args()
    timings: Timings = {}
    run_sync(args.rounds, args.requests, timings)
    asyncio.run(run_async(args.rounds, args.requests, timings))

    n = args.requests
    print(f"{args.rounds} paired rounds x {n} requests per client")
    print(
        f"{'client':<7} {'body':<9} {'bare us/req':>12} {'limited us/req':>15} "
        f"{'ratio (best)':>13} {'ratio (median)':>15}"
    )
    for (face, body), pairs in timings.items():
        bare = min(b for b, _ in pairs) / n * 1e6
        limited = min(lim for _, lim in pairs) / n * 1e6
        median = statistics.median(lim / b for b, lim in pairs)
        print(
            f"{face:<7} {body:<9} {bare:>12.2f} {limited:>15.2f} "
            f"{limited / bare:>13.3f} {median:>15.3f}"
        )


if __name__ == "__main__":
    main()
