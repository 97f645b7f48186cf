"""The batch face: a job that throttles itself to what its downstream can take.

Run:  python examples/batch/example.py

``run_batch`` pushes 3,000 records, read lazily from a generator, through a
stand-in downstream that works on 6 calls at once and answers "overloaded"
(raised as ``Overloaded``, mapped to a ``dropped`` outcome) when more arrive.
The batch waits for slots instead of failing, never has more calls in flight
than the window, and follows the window as overloads halve it and successes
grow it.  Results arrive in input order; failures are collected.  Then the
same job with ``arun_batch`` on asyncio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BatchProgress,
    Outcome,
    arun_batch,
    run_batch,
)

CAPACITY = 6


class Overloaded(Exception):
    """The downstream had no room for the call."""


class Downstream:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.working = self.peak = 0

    def store(self, record: int) -> int:
        with self.lock:
            if self.working >= CAPACITY:
                raise Overloaded(record)
            self.working += 1
            self.peak = max(self.peak, self.working)
        try:
            time.sleep(0.002)  # the write
            return record * 2
        finally:
            with self.lock:
                self.working -= 1


def records(count: int) -> Iterator[int]:
    """Read lazily, as from a file or a cursor: the batch never holds them all."""
    yield from range(count)


def show(progress: BatchProgress) -> None:
    if progress.completed % 500 == 0:
        print(
            f"  {progress.completed:>5} done, {progress.failed:>3} failed, "
            f"window {progress.window:>2}, {progress.in_flight:>2} in flight"
        )


def main() -> None:
    downstream = Downstream()
    config = BackpressureConfig(congestion_window_min=2, congestion_window_max=24)
    limiter = Backpressure(config, name="example-batch", registry=None)
    checksum = 0
    last = -1

    def on_result(record: int, result: int) -> None:
        nonlocal checksum, last
        assert record > last  # ordered=True: input order (failed records are skipped)
        last = record
        checksum += result

    started = time.monotonic()
    report = run_batch(
        limiter,
        downstream.store,
        records(3000),
        ordered=True,
        on_result=on_result,
        on_error="collect",
        progress=show,
        classify={Overloaded: Outcome.DROPPED},
    )
    print(
        f"threads: {report.succeeded} stored, {report.failed} overloaded "
        f"(first: record {report.failures[0].item if report.failures else '-'}), "
        f"{time.monotonic() - started:.1f} s; the downstream saw at most {downstream.peak} "
        f"at once; checksum {checksum}"
    )
    anyio.run(async_main)


async def async_main() -> None:
    config = BackpressureConfig(congestion_window_min=2, congestion_window_max=24)
    limiter = Backpressure(config, name="example-abatch", registry=None)
    working = 0
    peak = 0

    async def store(record: int) -> int:
        nonlocal working, peak
        if working >= CAPACITY:
            raise Overloaded(record)
        working += 1
        peak = max(peak, working)
        try:
            await anyio.sleep(0.002)
            return record * 2
        finally:
            working -= 1

    report = await arun_batch(
        limiter,
        store,
        records(3000),
        on_error="collect",
        classify={Overloaded: Outcome.DROPPED},
    )
    stats = limiter.stats()
    print(
        f"tasks:   {report.succeeded} stored, {report.failed} overloaded in "
        f"{report.elapsed:.1f} s; at most {peak} at once; window {stats.window}, "
        f"{stats.window_decreases} decreases"
    )


if __name__ == "__main__":
    main()
