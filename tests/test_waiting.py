"""Wait mode: timeouts, FIFO order, cancellation, the queue bound and closing.

Order-sensitive tests enqueue waiters one at a time and confirm each is queued
(``stats().waiting``) before starting the next, so the expected order is the
only possible one.  Polling loops wait for a condition, never for a time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    LimiterStateError,
    Outcome,
    Permit,
    QueueFullError,
    WaitTimeoutError,
    WindowPolicy,
)
from backpressure_client._waiters import ThreadWaiter

LIVENESS = 20.0  # seconds: a bound for "this must happen", never an expectation


def make(minimum: int = 1, maximum: int = 1, **config: Any) -> Backpressure:
    cfg = BackpressureConfig(congestion_window_min=minimum, congestion_window_max=maximum, **config)
    return Backpressure(cfg, name="waits", registry=None)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LIVENESS
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


async def await_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(LIVENESS):
        # Polling: the limiter's queue has no event to wait on, and threads
        # take part, so anyio.wait_all_tasks_blocked() would not do.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


def waiting(bp: Backpressure, n: int) -> Callable[[], bool]:
    return lambda: bp.stats().waiting == n


def assert_no_trace(bp: Backpressure, in_flight: int) -> None:
    s = bp.stats()
    assert (s.waiting, s.in_flight) == (0, in_flight)
    assert s.admitted == s.success + s.dropped + s.ignored + s.in_flight


class Worker(threading.Thread):
    """A thread that runs *fn* and keeps its result or exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Worker:
        self.join(LIVENESS)
        assert not self.is_alive(), "worker thread did not finish"
        return self


# -- timeouts ---------------------------------------------------------------------


def test_thread_wait_times_out_with_wait_timeout_error() -> None:
    bp = make()
    held = bp.try_acquire()
    with pytest.raises(WaitTimeoutError) as info:
        bp.acquire(timeout=0.05)
    exc = info.value
    assert (exc.window, exc.in_flight, exc.limiter) == (1, 1, "waits")
    assert "no slot within the wait timeout" in str(exc)
    s = bp.stats()
    assert (s.rejected, s.waiting) == (1, 0)
    assert s.wait_seconds > 0
    held.release()
    bp.try_acquire()  # the expired waiter left the queue: the gate is open again


def test_configured_wait_timeout_is_the_default() -> None:
    bp = make(wait_timeout=0.05)
    bp.try_acquire()
    with pytest.raises(WaitTimeoutError):
        bp.acquire()
    with pytest.raises(WaitTimeoutError), bp.slot():
        pass
    assert_no_trace(bp, in_flight=1)


@pytest.mark.anyio
async def test_task_wait_times_out_with_wait_timeout_error() -> None:
    bp = make(wait_timeout=0.05)
    held = bp.try_acquire()
    with pytest.raises(WaitTimeoutError):
        await bp.aacquire(timeout=0.05)
    with pytest.raises(WaitTimeoutError):
        async with bp.slot():
            pass
    assert bp.stats().rejected == 2
    assert_no_trace(bp, in_flight=1)
    held.release()
    (await bp.aacquire()).release()


@pytest.mark.parametrize("timeout", [1e12, math.inf])
def test_a_long_or_unlimited_wait_for_a_thread_ends_with_a_slot(timeout: float) -> None:
    bp = make()
    held = bp.try_acquire()
    worker = Worker(lambda: bp.acquire(timeout=timeout))
    worker.start()
    wait_until(waiting(bp, 1))
    held.release()
    assert worker.finish().error is None
    assert isinstance(worker.result, Permit)


@pytest.mark.anyio
async def test_an_unlimited_wait_for_a_task_ends_with_a_slot() -> None:
    bp = make()
    held = bp.try_acquire()
    releaser = Worker(lambda: (wait_until(waiting(bp, 1)), held.release()))
    releaser.start()
    permit = await bp.aacquire(timeout=math.inf)
    releaser.finish()
    permit.release()
    assert_no_trace(bp, in_flight=0)


def test_an_unlimited_wait_ends_when_the_limiter_closes() -> None:
    bp = make()
    bp.try_acquire()
    worker = Worker(lambda: bp.acquire(timeout=math.inf))
    worker.start()
    wait_until(waiting(bp, 1))
    bp.close()
    assert isinstance(worker.finish().error, LimiterStateError)


# -- hand-off and FIFO ------------------------------------------------------------------


def test_released_slot_goes_to_the_waiting_thread() -> None:
    bp = make()
    held = bp.try_acquire()
    worker = Worker(lambda: bp.acquire(timeout=LIVENESS))
    worker.start()
    wait_until(waiting(bp, 1))
    held.release()
    permit = worker.finish().result
    assert isinstance(permit, Permit)
    assert (permit.in_flight_at_admission, permit.seq) == (1, 1)
    assert_no_trace(bp, in_flight=1)
    assert bp.stats().admitted == 2


@pytest.mark.anyio
async def test_a_release_in_another_thread_wakes_the_waiting_task() -> None:
    bp = make()
    held = bp.try_acquire()
    releaser = Worker(lambda: (wait_until(waiting(bp, 1)), held.release()))
    releaser.start()
    permit = await bp.aacquire(timeout=LIVENESS)
    assert permit.in_flight_at_admission == 1
    permit.release()
    releaser.finish()
    assert_no_trace(bp, in_flight=0)


def test_a_growing_window_hands_each_new_slot_to_a_waiter() -> None:
    bp = make(1, 10, window_policy=WindowPolicy.seed())
    held = bp.try_acquire()
    workers = []
    for i in range(3):
        worker = Worker(lambda: bp.acquire(timeout=LIVENESS))
        worker.start()
        workers.append(worker)
        wait_until(waiting(bp, i + 1))
    held.release(Outcome.SUCCESS)  # window 1 -> 2: both free slots go to the queue
    permits = [w.finish().result for w in workers[:2]]
    assert bp.window == 2
    assert bp.stats().waiting == 1
    for p in permits:
        assert isinstance(p, Permit)
        p.release(Outcome.IGNORED)
    assert isinstance(workers[2].finish().result, Permit)


def test_threads_get_slots_in_fifo_order() -> None:
    bp = make()
    held = bp.try_acquire()
    order: list[int] = []

    def worker(i: int) -> None:
        permit = bp.acquire(timeout=LIVENESS)
        order.append(i)  # between acquire and release: the order of the hand-offs
        permit.release()

    workers = []
    for i in range(8):
        w = Worker(lambda i=i: worker(i))
        w.start()
        workers.append(w)
        wait_until(waiting(bp, i + 1))
    held.release()
    for w in workers:
        assert w.finish().error is None
    assert order == list(range(8))
    assert_no_trace(bp, in_flight=0)


@pytest.mark.anyio
async def test_tasks_get_slots_in_fifo_order() -> None:
    bp = make()
    held = bp.try_acquire()
    order: list[int] = []

    async def worker(i: int) -> None:
        async with bp.slot(timeout=LIVENESS):
            order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(worker, i)
            await await_until(waiting(bp, i + 1))
        held.release()
    assert order == list(range(8))
    assert_no_trace(bp, in_flight=0)


@pytest.mark.anyio
async def test_threads_and_tasks_share_one_fifo_queue() -> None:
    bp = make()
    held = bp.try_acquire()
    order: list[str] = []

    def thread_worker(tag: str) -> None:
        with bp.slot(timeout=LIVENESS):
            order.append(tag)

    async def task_worker(tag: str) -> None:
        async with bp.slot(timeout=LIVENESS):
            order.append(tag)

    expected = [f"{kind}{i}" for i in range(4) for kind in ("thread", "task")]
    threads = []
    async with anyio.create_task_group() as tg:
        for n, tag in enumerate(expected):
            if tag.startswith("thread"):
                t = Worker(lambda tag=tag: thread_worker(tag))
                t.start()
                threads.append(t)
            else:
                tg.start_soon(task_worker, tag)
            await await_until(waiting(bp, n + 1))
        held.release()
        await await_until(lambda: len(order) == len(expected))
    for t in threads:
        assert t.finish().error is None
    assert order == expected
    assert_no_trace(bp, in_flight=0)


# -- cancellation -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    bp = make()
    held = bp.try_acquire()
    before = bp.stats()
    scope = anyio.CancelScope()

    async def waiter() -> None:
        with scope:
            await bp.aacquire(timeout=LIVENESS)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await await_until(waiting(bp, 1))
        scope.cancel()
    assert scope.cancelled_caught
    after = bp.stats()
    assert (after.waiting, after.in_flight, after.rejected, after.admitted) == (
        0,
        1,
        before.rejected,
        before.admitted,
    )
    held.release()
    bp.try_acquire()  # the gate reopened when the queue emptied


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["cancel-then-release", "release-then-cancel"])
async def test_a_slot_handed_to_a_waiter_as_it_is_cancelled_is_passed_on(order: str) -> None:
    bp = make()
    held = bp.try_acquire()
    got: list[str] = []
    first_scope = anyio.CancelScope()

    async def first() -> None:
        with first_scope:
            async with bp.slot(timeout=LIVENESS):
                got.append("first")
                await anyio.sleep_forever()

    async def second() -> None:
        async with bp.slot(timeout=LIVENESS):
            got.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await await_until(waiting(bp, 1))
        tg.start_soon(second)
        await await_until(waiting(bp, 2))
        # No checkpoint between the two steps: the hand-off and the
        # cancellation land on the first waiter before it runs again.
        if order == "cancel-then-release":
            first_scope.cancel()
            held.release()
        else:
            held.release()
            first_scope.cancel()
    assert got[-1] == "second", "the slot was lost with the cancelled waiter"
    if order == "cancel-then-release":
        assert got == ["second"]
    assert_no_trace(bp, in_flight=0)
    bp.try_acquire()


@pytest.mark.parametrize("handed_over", [True, False], ids=["slot-handed-over", "still-queued"])
def test_an_interrupted_thread_waiter_leaves_no_trace(
    monkeypatch: pytest.MonkeyPatch, handed_over: bool
) -> None:
    bp = make()
    held = bp.try_acquire()
    behind: list[Worker] = []
    interrupted: list[ThreadWaiter] = []
    real_wait = ThreadWaiter.wait

    def interrupted_wait(self: ThreadWaiter, timeout: float) -> bool:
        if interrupted:  # the thread queued behind us waits for real
            return real_wait(self, timeout)
        interrupted.append(self)
        if handed_over:
            worker = Worker(lambda: bp.acquire(timeout=LIVENESS))
            worker.start()
            behind.append(worker)
            wait_until(waiting(bp, 2))
            held.release()  # hands the slot to this (first) waiter
            assert self.granted
        raise KeyboardInterrupt

    monkeypatch.setattr(ThreadWaiter, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        bp.acquire(timeout=LIVENESS)
    monkeypatch.undo()
    if handed_over:
        permit = behind[0].finish().result
        assert isinstance(permit, Permit), "the slot was lost with the interrupted waiter"
        assert_no_trace(bp, in_flight=1)
        permit.release()
    else:
        assert_no_trace(bp, in_flight=1)
        held.release()
    assert_no_trace(bp, in_flight=0)
    bp.try_acquire()


# -- the queue bound ----------------------------------------------------------------------


def test_a_full_queue_rejects_at_once_with_queue_full_error() -> None:
    bp = make(max_waiters=2)
    held = bp.try_acquire()
    workers = []
    for i in range(2):
        w = Worker(lambda: bp.acquire(timeout=LIVENESS))
        w.start()
        workers.append(w)
        wait_until(waiting(bp, i + 1))
    with pytest.raises(QueueFullError) as info:
        bp.acquire(timeout=LIVENESS)
    assert "wait queue full" in str(info.value)
    assert (info.value.window, info.value.in_flight) == (1, 1)
    assert bp.stats().waiting == 2
    held.release()
    for w in workers:
        permit = w.finish().result
        assert isinstance(permit, Permit)
        permit.release()
    assert_no_trace(bp, in_flight=0)


@pytest.mark.anyio
async def test_a_full_queue_rejects_tasks_at_once() -> None:
    bp = make(max_waiters=1)
    held = bp.try_acquire()
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            (await bp.aacquire(timeout=LIVENESS)).release()

        tg.start_soon(waiter)
        await await_until(waiting(bp, 1))
        with pytest.raises(QueueFullError):
            await bp.aacquire(timeout=LIVENESS)
        held.release()
    assert_no_trace(bp, in_flight=0)


def test_max_waiters_zero_never_queues() -> None:
    bp = make(max_waiters=0)
    bp.try_acquire()
    with pytest.raises(QueueFullError):
        bp.acquire(timeout=LIVENESS)
    assert_no_trace(bp, in_flight=1)


# -- closing --------------------------------------------------------------------------------


def test_close_wakes_waiting_threads_with_limiter_state_error() -> None:
    bp = make()
    held = bp.try_acquire()
    workers = []
    for i in range(3):
        w = Worker(lambda: bp.acquire(timeout=LIVENESS * 10))
        w.start()
        workers.append(w)
        wait_until(waiting(bp, i + 1))
    bp.close()
    for w in workers:
        assert isinstance(w.finish().error, LimiterStateError)
    assert bp.stats().waiting == 0
    assert held.release() is True
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_close_wakes_waiting_tasks_with_limiter_state_error() -> None:
    bp = make()
    bp.try_acquire()
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await bp.aacquire(timeout=LIVENESS * 10)
        except LimiterStateError as exc:
            errors.append(exc)

    with anyio.fail_after(LIVENESS):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(waiter)
                await await_until(waiting(bp, i + 1))
            await bp.aclose()
    assert len(errors) == 3
    assert bp.stats().waiting == 0


@pytest.mark.anyio
async def test_close_from_another_thread_wakes_waiting_tasks() -> None:
    bp = make()
    bp.try_acquire()
    closer = Worker(lambda: (wait_until(waiting(bp, 1)), bp.close()))
    closer.start()
    with anyio.fail_after(LIVENESS), pytest.raises(LimiterStateError):
        await bp.aacquire(timeout=LIVENESS * 10)
    closer.finish()


# -- waiters that can no longer be woken ----------------------------------------------


def queue_a_waiter_on_a_closed_loop(bp: Backpressure) -> None:
    """Queue a task's wait, then close its loop without cancelling it: a dead waiter."""
    import asyncio

    loop = asyncio.new_event_loop()
    task = loop.create_task(bp.aacquire(timeout=LIVENESS))
    while bp.stats().waiting == 0:
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert not task.done()


def test_a_waiter_on_a_closed_event_loop_does_not_cost_a_slot() -> None:
    bp = make(1, 1)
    held = bp.try_acquire()
    queue_a_waiter_on_a_closed_loop(bp)
    # The release hands the slot to the dead waiter, finds it cannot be
    # woken, and takes the slot back instead of raising or losing it.
    assert held.release() is True
    assert bp.in_flight == 0
    assert bp.stats().waiting == 0
    bp.try_acquire().release()
    assert bp.in_flight == 0


def test_a_dead_waiter_passes_its_slot_to_the_next_live_one() -> None:
    bp = make(1, 1)
    held = bp.try_acquire()
    queue_a_waiter_on_a_closed_loop(bp)
    worker = Worker(lambda: bp.acquire(timeout=LIVENESS))
    worker.start()
    wait_until(waiting(bp, 2))
    held.release()
    permit = worker.finish().result
    assert isinstance(permit, Permit)
    permit.release()
    assert bp.in_flight == 0
