"""The batch helpers: order, errors, progress, the window as the bound, bounded memory."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.lowlevel
import pytest

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    LimiterStateError,
    WaitTimeoutError,
    WindowPolicy,
)
from backpressure_client._batch import BatchProgress, arun_batch, run_batch


def make_limiter(
    window: int = 4, *, maximum: int | None = None, policy: WindowPolicy | None = None
) -> Backpressure:
    config = BackpressureConfig(
        congestion_window_min=window,
        congestion_window_max=maximum or window,
        window_policy=policy or WindowPolicy(),
    )
    return Backpressure(config, registry=None)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


class Lookahead:
    """An iterable that records how far ahead of the finished calls it was consumed."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = 0
        self.finished = 0
        self.most_ahead = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.count):
            self.produced += 1
            self.most_ahead = max(self.most_ahead, self.produced - self.finished)
            yield i

    async def aiter(self) -> AsyncIterator[int]:
        for i in iter(self):
            yield i

    def done(self, item: int, result: int) -> None:
        self.finished += 1


# -- threads: results, order, errors, progress -------------------------------------


def test_every_item_is_processed_and_results_reach_on_result() -> None:
    bp = make_limiter(4)
    results: dict[int, int] = {}
    report = run_batch(bp, lambda x: x * x, range(50), on_result=results.__setitem__)
    assert results == {i: i * i for i in range(50)}
    assert (report.succeeded, report.failed, report.completed, report.failures) == (50, 0, 50, ())
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.latency_count) == (0, 50, 50)


def test_ordered_results_follow_the_input_order_whatever_the_completion_order() -> None:
    n = 8
    bp = make_limiter(n)
    gates = [threading.Event() for _ in range(n)]
    started = threading.Semaphore(0)
    delivered: list[int] = []
    completion: list[int] = []

    def call(i: int) -> int:
        started.release()
        assert gates[i].wait(10)
        return i

    def progress(p: BatchProgress) -> None:
        completion.append(p.completed)

    def run() -> None:
        run_batch(
            bp,
            call,
            range(n),
            ordered=True,
            on_result=lambda item, result: delivered.append(result),
            progress=progress,
        )

    thread = threading.Thread(target=run)
    thread.start()
    for _ in range(n):
        assert started.acquire(timeout=10)
    for finished, i in enumerate(reversed(range(n)), start=1):  # finish last to first
        gates[i].set()
        if i:
            wait_until(lambda finished=finished: len(completion) == finished)  # type: ignore[misc]
            assert delivered == []  # item 0 has not finished: nothing can be delivered
    thread.join(10)
    assert delivered == list(range(n))
    assert completion == list(range(1, n + 1))


def test_on_error_raise_stops_the_batch_and_raises_the_first_error() -> None:
    bp = make_limiter(2)
    items = Lookahead(1000)

    def call(i: int) -> int:
        if i == 10:
            raise ValueError(f"bad item {i}")
        return i

    with pytest.raises(ValueError, match="bad item 10"):
        run_batch(bp, call, items, on_result=items.done, max_workers=2)
    assert items.produced < 20  # it stopped pulling items
    assert bp.in_flight == 0


def test_on_error_collect_records_failures_and_goes_on() -> None:
    bp = make_limiter(3)
    delivered: list[int] = []

    def call(i: int) -> int:
        if i % 4 == 1:
            raise KeyError(i)
        return i

    report = run_batch(
        bp,
        call,
        range(12),
        ordered=True,
        on_error="collect",
        on_result=lambda item, result: delivered.append(result),
    )
    assert delivered == [0, 2, 3, 4, 6, 7, 8, 10, 11]
    assert (report.succeeded, report.failed) == (9, 3)
    assert [(f.index, f.item) for f in report.failures] == [(1, 1), (5, 5), (9, 9)]
    assert all(isinstance(f.error, KeyError) for f in report.failures)
    assert bp.stats().ignored == 3


def test_failures_are_classified_for_the_window() -> None:
    bp = make_limiter(2, maximum=8)

    def call(i: int) -> int:
        raise ConnectionError(i)

    run_batch(bp, call, range(3), on_error="collect", classify={ConnectionError: "dropped"})
    assert bp.stats().dropped == 3


def test_progress_reports_each_item() -> None:
    bp = make_limiter(4)
    seen: list[BatchProgress] = []
    run_batch(bp, lambda x: x, range(20), progress=seen.append)
    assert [p.completed for p in seen] == list(range(1, 21))
    last = seen[-1]
    assert (last.succeeded, last.failed, last.window) == (20, 0, 4)
    assert all(0 <= p.in_flight <= 4 for p in seen)


def test_an_item_that_gets_no_slot_within_wait_timeout_fails() -> None:
    bp = make_limiter(1)
    calls: list[int] = []
    with bp.slot():  # someone else holds the only slot
        report = run_batch(
            bp, calls.append, range(3), on_error="collect", wait_timeout=0.01, max_workers=1
        )
    assert calls == []
    assert report.failed == 3
    assert all(isinstance(f.error, WaitTimeoutError) for f in report.failures)


def test_a_failing_callback_stops_the_batch_in_any_mode() -> None:
    bp = make_limiter(2)

    def on_result(item: int, result: int) -> None:
        if item == 3:
            raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        run_batch(bp, lambda x: x, range(100), on_result=on_result, on_error="collect")
    assert bp.in_flight == 0


def test_an_iterable_that_raises_stops_the_batch() -> None:
    bp = make_limiter(2)

    def items() -> Iterator[int]:
        yield 1
        raise OSError("source broke")

    with pytest.raises(OSError, match="source broke"):
        run_batch(bp, lambda x: x, items())
    assert bp.in_flight == 0


def test_a_closed_limiter_stops_the_batch() -> None:
    bp = make_limiter(2)
    bp.close()
    with pytest.raises(LimiterStateError):
        run_batch(bp, lambda x: x, range(3))


def test_bad_options_are_refused() -> None:
    bp = make_limiter()
    with pytest.raises(ValueError, match="on_error"):
        run_batch(bp, lambda x: x, [], on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_workers"):
        run_batch(bp, lambda x: x, [], max_workers=0)
    with pytest.raises(ValueError, match="wait_timeout"):
        run_batch(bp, lambda x: x, [], wait_timeout=-1)
    with pytest.raises(TypeError, match="Backpressure"):
        run_batch(object(), lambda x: x, [])  # type: ignore[arg-type]


# -- threads: the window is the bound --------------------------------------------------


class GatedCalls:
    """Calls that block until released, recording concurrency at each start."""

    def __init__(self, limiter: Backpressure) -> None:
        self.limiter = limiter
        self.lock = threading.Lock()
        self.gates: dict[int, threading.Event] = {}
        self.current = 0
        self.started = 0
        self.starts: list[tuple[int, int]] = []  # (calls running, window) at each start
        self.open = False

    def gate(self, i: int) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(i, threading.Event())

    def __call__(self, i: int) -> int:
        with self.lock:
            self.current += 1
            self.started += 1
            self.starts.append((self.current, self.limiter.window))
        try:
            if not self.open:
                assert self.gate(i).wait(10)
        finally:
            with self.lock:
                self.current -= 1
        return i

    def release(self, *items: int) -> None:
        for i in items:
            self.gate(i).set()

    def open_all(self) -> None:
        self.open = True
        with self.lock:
            gates = list(self.gates.values())
        for gate in gates:
            gate.set()


def test_the_batch_follows_the_window_down_and_up() -> None:
    # Grow one request per success, whatever the utilisation: a predictable window.
    bp = make_limiter(1, maximum=8, policy=WindowPolicy(min_utilisation=0.0))
    for _ in range(7):
        with bp.slot():
            pass
    assert bp.window == 8
    calls = GatedCalls(bp)
    thread = threading.Thread(target=run_batch, args=(bp, calls, range(200)))
    thread.start()
    try:
        wait_until(lambda: calls.current == 8)  # the window is reached ...
        assert calls.started == 8  # ... and not exceeded

        # Down: a graded signal caps the window at 2; the 8 running calls go on,
        # and no new call starts until fewer than 2 run.
        bp.report_signal("load", firing=False, level=0.75)
        assert bp.window == 2
        calls.release(*range(6))
        wait_until(lambda: calls.current == 2)
        assert calls.started == 8
        calls.release(6)
        wait_until(lambda: calls.started == 9)  # 1 old + 1 new: 2 running
        assert calls.current == 2

        # Up: the cap is lifted; each success grows the window by one and the
        # batch fills it.
        bp.report_signal("load", firing=False, level=0.0)
        calls.release(7, 8)  # two successes: window 4
        wait_until(lambda: calls.current == 4)
        assert bp.window == 4
        assert calls.started == 13
    finally:
        calls.open_all()
        thread.join(20)
    assert not thread.is_alive()
    assert calls.started == 200
    assert all(running <= window for running, window in calls.starts)
    assert max(running for running, _ in calls.starts) == 8
    assert bp.in_flight == 0


def test_max_workers_bounds_the_calls_below_the_window() -> None:
    bp = make_limiter(8)
    calls = GatedCalls(bp)
    thread = threading.Thread(
        target=lambda: run_batch(bp, calls, range(30), max_workers=3), daemon=True
    )
    thread.start()
    try:
        wait_until(lambda: calls.current == 3)
        assert calls.started == 3
    finally:
        calls.open_all()
        thread.join(20)
    assert max(running for running, _ in calls.starts) == 3


# -- threads: bounded memory -----------------------------------------------------------


def test_a_batch_of_100k_items_runs_in_bounded_memory() -> None:
    bp = make_limiter(8)
    items = Lookahead(100_000)
    tracemalloc.start()
    try:
        report = run_batch(bp, lambda x: x, items, ordered=True, on_result=items.done)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.succeeded == 100_000
    # Pulled at most the ordered look-ahead (2 x 8 workers) ahead of the results.
    assert items.most_ahead <= 2 * 8 + 1
    # A list of the items alone would take 800 kB, their results as much again.
    assert peak < 400_000, peak


# -- tasks -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_every_item_is_processed_in_order() -> None:
    bp = make_limiter(4)
    delivered: list[int] = []

    async def call(i: int) -> int:
        # Later items finish first: they yield to the loop fewer times.
        for _ in range(10 - i % 10):
            await anyio.lowlevel.checkpoint()
        return i

    report = await arun_batch(
        bp, call, range(40), ordered=True, on_result=lambda item, r: delivered.append(r)
    )
    assert delivered == list(range(40))
    assert report.succeeded == 40
    assert bp.stats().success == 40


@pytest.mark.anyio
async def test_async_items_may_be_an_async_iterable() -> None:
    bp = make_limiter(4)
    items = Lookahead(100)

    async def call(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i

    report = await arun_batch(bp, call, items.aiter(), on_result=items.done)
    assert report.succeeded == 100
    assert items.finished == 100


@pytest.mark.anyio
async def test_async_on_error_raise_cancels_the_running_calls() -> None:
    bp = make_limiter(4, maximum=8)
    started = 0

    async def call(i: int) -> int:
        nonlocal started
        started += 1
        if i == 3:
            await anyio.wait_all_tasks_blocked()
            raise ValueError("item 3")
        await anyio.sleep_forever()
        return i

    with pytest.raises(ValueError, match="item 3"):
        await arun_batch(bp, call, range(100))
    assert started == 4
    stats = bp.stats()
    # 3 cancelled + 1 failed, all ignored (plus, on some backends, the slot the
    # dispatcher was handed as the batch stopped, given back unused).
    assert (stats.in_flight, stats.success, stats.dropped) == (0, 0, 0)
    assert stats.ignored >= 4


@pytest.mark.anyio
async def test_async_on_error_collect() -> None:
    bp = make_limiter(2)

    async def call(i: int) -> int:
        if i in (2, 5):
            raise LookupError(i)
        return i

    report = await arun_batch(bp, call, range(8), on_error="collect")
    assert (report.succeeded, report.failed) == (6, 2)
    assert [f.item for f in report.failures] == [2, 5]


@pytest.mark.anyio
async def test_async_a_failing_callback_stops_the_batch() -> None:
    bp = make_limiter(2)

    async def call(i: int) -> int:
        return i

    def progress(p: BatchProgress) -> None:
        if p.completed == 5:
            raise RuntimeError("progress bug")

    with pytest.raises(RuntimeError, match="progress bug"):
        await arun_batch(bp, call, range(50), progress=progress, on_error="collect")
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_async_stopping_early_closes_an_async_generator() -> None:
    bp = make_limiter(2)
    closed = False

    async def items() -> AsyncIterator[int]:
        nonlocal closed
        try:
            for i in range(1000):
                yield i
        finally:
            closed = True

    async def call(i: int) -> int:
        if i == 2:
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 2"):
        await arun_batch(bp, call, items())
    assert closed


@pytest.mark.anyio
async def test_async_cancelling_the_caller_cancels_the_batch() -> None:
    bp = make_limiter(3)
    running = 0

    async def call(i: int) -> int:
        nonlocal running
        running += 1
        await anyio.sleep_forever()
        return i

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(arun_batch, bp, call, range(10))
            await anyio.wait_all_tasks_blocked()
            assert running == 3
            scope.cancel()
    stats = bp.stats()
    assert (stats.in_flight, stats.ignored, stats.success) == (0, 3, 0)


@pytest.mark.anyio
async def test_async_items_that_get_no_slot_within_wait_timeout_fail() -> None:
    bp = make_limiter(1)

    async def call(i: int) -> int:
        return i

    async with bp.slot():
        report = await arun_batch(bp, call, range(2), on_error="collect", wait_timeout=0.01)
    assert report.failed == 2
    assert all(isinstance(f.error, WaitTimeoutError) for f in report.failures)


@pytest.mark.anyio
async def test_async_the_batch_follows_the_window_down_and_up() -> None:
    bp = make_limiter(1, maximum=8, policy=WindowPolicy(min_utilisation=0.0))
    for _ in range(7):
        with bp.slot():
            pass
    gates: dict[int, anyio.Event] = {}
    starts: list[tuple[int, int]] = []
    current = 0

    def gate(i: int) -> anyio.Event:
        return gates.setdefault(i, anyio.Event())

    async def call(i: int) -> int:
        nonlocal current
        current += 1
        starts.append((current, bp.window))
        try:
            await gate(i).wait()
        finally:
            current -= 1
        return i

    async with anyio.create_task_group() as tg:
        tg.start_soon(arun_batch, bp, call, range(100))
        await anyio.wait_all_tasks_blocked()
        assert (current, len(starts)) == (8, 8)

        bp.report_signal("load", firing=False, level=0.75)  # down to 2
        for i in range(6):
            gate(i).set()
        await anyio.wait_all_tasks_blocked()
        assert (current, len(starts)) == (2, 8)
        gate(6).set()
        await anyio.wait_all_tasks_blocked()
        assert (current, len(starts)) == (2, 9)

        bp.report_signal("load", firing=False, level=0.0)  # and up again
        gate(7).set()
        gate(8).set()
        await anyio.wait_all_tasks_blocked()
        assert (current, len(starts), bp.window) == (4, 13, 4)

        for i in range(100):
            gate(i).set()
    assert len(starts) == 100
    assert all(running <= window for running, window in starts)
    assert bp.in_flight == 0
    assert bp.stats().ignored == 0


@pytest.mark.anyio
async def test_async_a_batch_of_100k_items_runs_in_bounded_memory() -> None:
    bp = make_limiter(8)
    items = Lookahead(100_000)

    async def call(i: int) -> int:
        return i

    report = await arun_batch(bp, call, items, ordered=True, on_result=items.done)
    assert report.succeeded == 100_000
    assert items.most_ahead <= 2 * 8 + 1


def test_async_batch_memory_is_bounded_under_tracemalloc() -> None:
    # One backend is enough here: the bookkeeping is the same on both.
    bp = make_limiter(8)

    async def call(i: int) -> int:
        return i

    async def main() -> tuple[int, int]:
        items = Lookahead(20_000)
        tracemalloc.start()
        try:
            report = await arun_batch(bp, call, items, ordered=True, on_result=items.done)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return report.succeeded, peak

    succeeded, peak = anyio.run(main)
    assert succeeded == 20_000
    assert peak < 200_000, peak


def test_outcome_counts_match_the_report() -> None:
    bp = make_limiter(4, maximum=16)

    def call(i: int) -> int:
        if i % 10 == 0:
            raise TimeoutError(i)
        return i

    report = run_batch(bp, call, range(100), on_error="collect")
    stats = bp.stats()
    assert report.failed == stats.dropped == 10
    assert report.succeeded == stats.success == 90


# -- waiting and stopping --------------------------------------------------------


def queue_full_limiter() -> Backpressure:
    """A limiter of one slot and one place in its wait queue."""
    return Backpressure(
        BackpressureConfig(congestion_window_min=1, congestion_window_max=1, max_waiters=1),
        registry=None,
    )


def test_a_wait_that_runs_out_behind_a_full_queue_fails_with_wait_timeout_error() -> None:
    bp = queue_full_limiter()
    held = bp.try_acquire()
    waiter = threading.Thread(target=lambda: bp.acquire(30).release())
    waiter.start()
    wait_until(lambda: bp.stats().waiting == 1)  # the queue is full
    try:
        report = run_batch(bp, lambda i: i, [0], on_error="collect", wait_timeout=0.05)
    finally:
        held.release()
        waiter.join()
    assert [type(f.error) for f in report.failures] == [WaitTimeoutError]


@pytest.mark.anyio
async def test_async_a_wait_that_runs_out_behind_a_full_queue_fails_with_wait_timeout_error() -> (
    None
):
    bp = queue_full_limiter()

    async def call(i: int) -> int:
        return i

    async with bp.slot(), anyio.create_task_group() as tg:
        tg.start_soon(bp.aacquire, 30)  # fills the queue; its slot is released on exit
        await anyio.wait_all_tasks_blocked()
        assert bp.stats().waiting == 1
        report = await arun_batch(bp, call, [0], on_error="collect", wait_timeout=0.05)
        tg.cancel_scope.cancel()
    assert [type(f.error) for f in report.failures] == [WaitTimeoutError]


def test_a_stopped_batch_waits_for_its_running_calls_only_for_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import backpressure_client._batch as batch_module

    monkeypatch.setattr(batch_module, "STOP_GRACE", 0.05)
    bp = make_limiter(2)
    stuck_started = threading.Event()
    unstick = threading.Event()

    def call(i: int) -> int:
        if i == 0:
            stuck_started.set()
            unstick.wait(30)
            return i
        stuck_started.wait(30)
        raise ValueError("item 1")

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_batch(bp, call, [0, 1], max_workers=2)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(10)  # without the grace it would wait for item 0
    try:
        assert not runner.is_alive()
        assert [type(exc) for exc in outcome] == [ValueError]
        assert bp.in_flight == 1  # item 0, still running in its daemon thread
    finally:
        unstick.set()
        runner.join()
    wait_until(lambda: bp.in_flight == 0)  # and it gives its slot back when done


def test_a_batch_that_runs_to_its_end_waits_for_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import backpressure_client._batch as batch_module

    monkeypatch.setattr(batch_module, "STOP_GRACE", 0.0)  # must not matter
    bp = make_limiter(2)
    finished: list[int] = []

    def call(i: int) -> int:
        time.sleep(0.02)
        finished.append(i)
        return i

    assert run_batch(bp, call, range(4)).succeeded == 4
    assert sorted(finished) == [0, 1, 2, 3]
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_async_a_stopped_batch_stops_waiting_for_a_slot() -> None:
    # The window is full of other callers' requests, one of them queued ahead
    # of the batch: the failure of item 0 frees no slot for the batch.
    bp = make_limiter(2)
    outside = bp.try_acquire()
    fail = anyio.Event()
    queued_ahead = anyio.Event()

    async def call(i: int) -> int:
        await fail.wait()
        raise ValueError(f"item {i}")

    async def wait_outside() -> None:
        queued_ahead.set()
        async with bp.slot(30):
            await anyio.sleep_forever()

    async def items() -> AsyncIterator[int]:
        yield 0
        tg.start_soon(wait_outside)
        await queued_ahead.wait()
        while bp.stats().waiting < 1:  # wait_outside is queued
            await anyio.lowlevel.checkpoint()
        yield 1  # the batch now waits behind wait_outside
        raise AssertionError("item 1 must not start")

    async with anyio.create_task_group() as tg:

        async def release_item_0() -> None:
            while bp.stats().waiting < 2:  # wait_outside, then the batch
                await anyio.lowlevel.checkpoint()
            fail.set()

        tg.start_soon(release_item_0)
        with pytest.raises(ValueError, match="item 0"), anyio.fail_after(5):
            await arun_batch(bp, call, items())
        assert bp.stats().waiting == 0  # the batch's wait left the queue
        tg.cancel_scope.cancel()
    outside.release()
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_progress_in_flight_leaves_out_the_item_waiting_for_its_slot() -> None:
    bp = make_limiter(2)
    outside = bp.try_acquire()
    seen: list[BatchProgress] = []

    async def call(i: int) -> int:
        await anyio.wait_all_tasks_blocked()  # item 1 now waits for a slot
        return i

    report = await arun_batch(bp, call, range(2), progress=seen.append, max_workers=2)
    outside.release()
    assert report.succeeded == 2
    # When item 0 finished, item 1 had a slot handed over but had not started.
    assert [p.in_flight for p in seen] == [0, 0]
