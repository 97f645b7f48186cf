"""The decorator face: @limit on outbound call functions, sync and async.

Run:  python examples/decorator/example.py

A stand-in for a downstream service works on at most 5 calls at once; a call
beyond that waits in its queue and times out (``TimeoutError``) when the
queue is long.  Sixteen threads call it through a ``@limit``-decorated
function: timeouts are ``dropped`` outcomes that halve the window, and the
window settles near what the service can take.  Then an ``async def``
function, with an exception-to-outcome mapping, on asyncio (and trio, if
installed).
"""

from __future__ import annotations

import threading
import time

import anyio

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    Outcome,
    limit,
)


class Downstream:
    """Works on CAPACITY calls at once, 10 ms each; long queues time out."""

    CAPACITY = 5

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.workers = threading.Semaphore(self.CAPACITY)
        self.calls = self.timeouts = 0

    def query(self, key: str) -> str:
        with self.lock:
            self.calls += 1
        # 15 ms of patience: a call that waits for a worker longer times out.
        if not self.workers.acquire(timeout=0.015):
            with self.lock:
                self.timeouts += 1
            raise TimeoutError(f"downstream too busy for {key!r}")
        try:
            time.sleep(0.01)
            return key.upper()
        finally:
            self.workers.release()


downstream = Downstream()
limiter = Backpressure(
    BackpressureConfig(congestion_window_min=1, congestion_window_max=32),
    name="example-decorator",
    registry=None,
)


@limit(limiter, wait_timeout=1.0)  # wait up to 1 s for a slot, then BackpressureError
def lookup(key: str) -> str:
    """Ask the downstream service about *key* (the signature and hints are kept)."""
    return downstream.query(key)


def attempt(key: str) -> str:
    """Call lookup(); say how it went."""
    try:
        lookup(key)
    except TimeoutError:
        return "timeout"
    except BackpressureError:
        return "no slot"
    return "ok"


def run_threads() -> None:
    failures: list[str] = []

    def caller(n: int) -> None:
        failures.extend(attempt(f"key-{n}-{i}") for i in range(40))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = limiter.stats()
    print(
        f"threads: {16 * 40} calls in {time.monotonic() - started:.1f} s; "
        f"{failures.count('timeout')} timed out, {failures.count('no slot')} found no slot"
    )
    print(
        f"         window {stats.window} (downstream capacity {Downstream.CAPACITY}), "
        f"{stats.dropped} dropped, {stats.window_decreases} decreases, "
        f"{downstream.timeouts} timeouts at the downstream"
    )


class Unavailable(Exception):
    """The async service's own overload error."""


async_limiter = Backpressure(
    BackpressureConfig(congestion_window_min=1, congestion_window_max=16),
    name="example-decorator-async",
    registry=None,
)
in_progress = 0


@limit(async_limiter, wait_timeout=2.0, classify={Unavailable: Outcome.DROPPED})
async def fetch(key: str) -> str:
    global in_progress
    in_progress += 1
    try:
        if in_progress > 6:  # the service's own limit
            raise Unavailable(key)
        await anyio.sleep(0.01)
        return key
    finally:
        in_progress -= 1


async def run_tasks() -> None:
    outcomes = {"ok": 0, "unavailable": 0}

    async def attempt(key: str) -> str:
        try:
            await fetch(key)
        except Unavailable:
            return "unavailable"
        return "ok"

    async def caller(n: int) -> None:
        for i in range(20):
            outcomes[await attempt(f"{n}-{i}")] += 1

    async with anyio.create_task_group() as tg:
        for n in range(12):
            tg.start_soon(caller, n)
    stats = async_limiter.stats()
    print(f"tasks:   {outcomes}; window {stats.window}, {stats.dropped} dropped (Unavailable)")


if __name__ == "__main__":
    run_threads()
    anyio.run(run_tasks)  # or anyio.run(run_tasks, backend="trio")
