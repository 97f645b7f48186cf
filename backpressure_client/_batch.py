"""The batch face: run a function over many items, throttled by the limiter.

:func:`run_batch` (threads) and :func:`arun_batch` (anyio tasks, on asyncio
or trio) call ``func(item)`` for each item of an iterable.  Every call holds
one of the limiter's slots, so the batch never has more calls in flight than
the window allows, and it follows the window as it shrinks and grows: a call
starts only when the limiter admits it.  Unlike the other faces, a batch
*waits* for slots instead of failing.

Memory stays bounded whatever the length of the iterable: items are pulled
one at a time, only when a worker is free, and results are handed to the
``on_result`` callback as they come instead of being collected.  With
``ordered=True`` results that finish early wait in a buffer of at most
``2 * max_workers`` entries; the batch stops pulling items while it is full.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._decorator import ExceptionOutcomes, _exception_outcome, resolve_classifier
from ._errors import BackpressureError, QueueFullError, WaitTimeoutError
from ._limiter import Backpressure, ExceptionClassifier, Permit
from ._transport import _IGNORED, _SUCCESS, _check_limiter, _wait_seconds

__all__ = ["BatchFailure", "BatchProgress", "BatchReport", "arun_batch", "run_batch"]

T = TypeVar("T")
F = TypeVar("F")
R = TypeVar("R")

#: What a failed call does to the batch: stop it and raise, or be recorded.
OnError = Literal["raise", "collect"]

# Seconds to pause before asking again when the limiter's wait queue is full.
_QUEUE_FULL_PAUSE: Final = 0.01

#: Seconds a stopped thread batch (a failure with on_error="raise", a failing
#: callback, an exception from the items or KeyboardInterrupt) waits for its
#: running calls before it raises; calls still running then finish in their
#: (daemon) threads and release their slots when they return.
STOP_GRACE: Final = 5.0


@dataclass(frozen=True)
class BatchProgress:
    """A snapshot of a running batch, passed to the ``progress`` callback.

    Counts are items; ``window`` and ``in_flight`` are requests.
    """

    #: items finished so far, succeeded or failed.
    completed: int
    #: items whose call returned.
    succeeded: int
    #: items whose call raised, or that got no slot within ``wait_timeout``.
    failed: int
    #: this batch's calls running now (an item still waiting for its slot
    #: is not counted).
    in_flight: int
    #: the limiter's window now.
    window: int


@dataclass(frozen=True)
class BatchFailure(Generic[T]):
    """One failed item of a batch run with ``on_error="collect"``."""

    #: the item's position in the input, from 0.
    index: int
    #: the item itself.
    item: T
    #: what the call raised (or the ``BackpressureError`` when no slot came).
    error: Exception


@dataclass(frozen=True)
class BatchReport(Generic[T]):
    """What a finished batch did.

    ``failures`` lists the failed items in input order (only with
    ``on_error="collect"``; a batch that raises has no report).
    """

    #: items whose call returned.
    succeeded: int
    #: items that failed.
    failed: int
    #: the failed items, in input order.
    failures: tuple[BatchFailure[T], ...]
    #: seconds from start to finish, by the limiter's clock.
    elapsed: float

    @property
    def completed(self) -> int:
        """Items processed, succeeded or failed."""
        return self.succeeded + self.failed


_SKIP: Final = object()  # a failed item's place in the ordered buffer


class _Ledger(Generic[T, R]):
    """The bookkeeping of one batch; its owner serialises the calls."""

    __slots__ = (
        "buffer",
        "collect",
        "error",
        "failed",
        "failures",
        "lookahead",
        "max_workers",
        "next_delivery",
        "ordered",
        "running",
        "stopped",
        "succeeded",
        "waiting",
    )

    def __init__(self, ordered: bool, collect: bool, max_workers: int) -> None:
        self.ordered = ordered
        self.collect = collect
        self.max_workers = max_workers
        self.lookahead = 2 * max_workers
        #: calls started plus the item reserved while it waits for its slot.
        self.running = 0
        #: 1 while the reserved item waits for its slot, else 0.
        self.waiting = 0
        self.succeeded = 0
        self.failed = 0
        self.next_delivery = 0
        self.buffer: dict[int, object] = {}
        self.failures: list[BatchFailure[T]] = []
        #: the exception the batch will raise: the first failure (raise mode),
        #: a callback's or classifier's exception, or None.
        self.error: BaseException | None = None
        self.stopped = False

    def can_start(self, index: int) -> bool:
        if self.running >= self.max_workers:
            return False
        return not self.ordered or index - self.next_delivery < self.lookahead

    def succeeded_with(self, index: int, item: T, result: R) -> list[tuple[T, R]]:
        """Record a call that returned; return the results now deliverable, in order."""
        self.running -= 1
        self.succeeded += 1
        return self._deliverable(index, (item, result))

    def failed_with(self, index: int, item: T, exc: BaseException) -> list[tuple[T, R]]:
        """Record a failed item; return the results now deliverable, in order.

        Only an :class:`Exception` is collected; anything else (``SystemExit``
        in a worker thread, say) stops the batch whatever the mode.
        """
        self.running -= 1
        self.failed += 1
        if self.collect and isinstance(exc, Exception):
            self.failures.append(BatchFailure(index, item, exc))
        else:
            self.fatal(exc)
        return self._deliverable(index, _SKIP)

    def fatal(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stopped = True

    def _deliverable(self, index: int, entry: object) -> list[tuple[T, R]]:
        if not self.ordered:
            return [] if entry is _SKIP else [entry]  # type: ignore[list-item]
        if index != self.next_delivery:
            self.buffer[index] = entry
            return []
        ready = [] if entry is _SKIP else [entry]
        index += 1
        buffer = self.buffer
        while index in buffer:
            entry = buffer.pop(index)
            if entry is not _SKIP:
                ready.append(entry)
            index += 1
        self.next_delivery = index
        return ready  # type: ignore[return-value]

    def progress(self, window: int) -> BatchProgress:
        """A snapshot for the ``progress`` callback."""
        done = self.succeeded + self.failed
        return BatchProgress(done, self.succeeded, self.failed, self.running - self.waiting, window)

    def report(self, elapsed: float) -> BatchReport[T]:
        failures = sorted(self.failures, key=lambda f: f.index)
        return BatchReport(self.succeeded, self.failed, tuple(failures), elapsed)


def _check_options(
    limiter: Backpressure,
    on_error: str,
    max_workers: int | None,
    wait_timeout: float | None,
) -> tuple[int, float | None]:
    _check_limiter(limiter)
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error={on_error!r}: must be 'raise' or 'collect'")
    if max_workers is None:
        max_workers = limiter.config.congestion_window_max
    elif isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers={max_workers!r}: must be an integer >= 1")
    wait = None if wait_timeout is None else _wait_seconds(wait_timeout, "wait_timeout")
    return max_workers, wait


class _SlotDeadline:
    """How long one item may still wait for a slot.

    The part of the thread and task batches' ``_acquire`` loops that does not
    block: the loops ask the limiter for :meth:`remaining` seconds and, when
    its wait queue is full, pause for :meth:`pause` seconds and ask again.
    """

    __slots__ = ("_deadline", "_queue_full")

    def __init__(self, wait: float | None) -> None:
        self._deadline = None if wait is None else time.monotonic() + wait
        self._queue_full: QueueFullError | None = None

    def remaining(self) -> float:
        """Seconds to pass to the limiter: ``math.inf`` without a ``wait_timeout``.

        :raises WaitTimeoutError: when the wait ran out during a pause, as the
            ``wait_timeout`` documentation promises (asking with ``0`` would
            give the fail-fast ``BackpressureError`` instead).
        """
        if self._deadline is None:
            return math.inf
        remaining = self._deadline - time.monotonic()
        if remaining > 0:
            return remaining
        full = self._queue_full
        if full is None:
            return 0.0  # wait_timeout=0: fail fast
        raise WaitTimeoutError(
            window=full.window,
            in_flight=full.in_flight,
            firing=full.firing,
            retry_after=full.retry_after,
            limiter=full.limiter,
        ) from full

    def pause(self, exc: QueueFullError) -> float:
        """Seconds to pause after the limiter's queue turned the item away with *exc*."""
        self._queue_full = exc
        return _QUEUE_FULL_PAUSE


# -- threads -----------------------------------------------------------------


def run_batch(
    limiter: Backpressure,
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    ordered: bool = False,
    on_result: Callable[[T, R], object] | None = None,
    on_error: OnError = "raise",
    progress: Callable[[BatchProgress], object] | None = None,
    wait_timeout: float | None = None,
    max_workers: int | None = None,
    classify: ExceptionClassifier | ExceptionOutcomes | None = None,
) -> BatchReport[T]:
    """Call ``func(item)`` for every item, in worker threads, through *limiter*.

    Each call waits for a slot and holds it while it runs, so at most
    ``min(window, max_workers)`` calls run at once, following the window as
    it changes.  Items are pulled lazily from *items* (an iterable of any
    length, a generator included) in the calling thread, which returns when
    every call has finished.

    :param limiter: the limiter shared by every client of the service.
    :param func: called once per item, in a worker thread.
    :param items: the items; never materialised.
    :param ordered: deliver results to *on_result* in input order (results
        that finish early are buffered, at most ``2 * max_workers``);
        otherwise in completion order.
    :param on_result: called with ``(item, result)`` for each call that
        returned.  Callbacks run in the worker threads, one at a time.
    :param on_error: ``"raise"``: the first failure stops the batch (no new
        calls start) and is raised once the running calls have finished, or
        after :data:`STOP_GRACE` seconds (5), whichever comes first;
        ``"collect"``: failures are recorded in the report and the batch goes
        on.
    :param progress: called with a :class:`BatchProgress` after each item.
    :param wait_timeout: seconds each item may wait for a slot, after which
        it fails with :class:`~backpressure_client.WaitTimeoutError`;
        ``None`` (the default) waits as long as it takes.
    :param max_workers: worker threads, hence the most calls at once;
        defaults to the limiter's ``congestion_window_max``.
    :param classify: how a call's exception counts for the window, as for
        :func:`~backpressure_client.limit`.
    :returns: the counts and, with ``"collect"``, the failures.
    :raises Exception: with ``on_error="raise"``, the first call's exception;
        in any mode, an exception raised by *items*, a callback or the
        classifier.
    :raises LimiterStateError: the limiter is closed or not started.

    A batch that ran to its end returns when every call has returned.  A
    stopped batch (see *on_error*; also a failing callback, an exception from
    *items* or ``KeyboardInterrupt``) waits at most :data:`STOP_GRACE`
    seconds for its running calls; calls still running then finish in their
    daemon threads, without callbacks, and release their slots when they
    return.  A stopped batch still waiting for a slot (the window full of
    other callers' requests) notices the stop once it gets one;
    ``KeyboardInterrupt`` interrupts that wait at once.
    """
    workers, wait = _check_options(limiter, on_error, max_workers, wait_timeout)
    batch: _ThreadBatch[T, R] = _ThreadBatch(
        limiter,
        func,
        _Ledger(ordered, on_error == "collect", workers),
        on_result,
        progress,
        wait,
        resolve_classifier(classify),
    )
    return batch.run(items)


class _Batch(Generic[T, R, F]):
    """What the thread and task batches share: the call, the ledger and the callbacks.

    *F* is the type of the function: ``Callable[[T], R]`` for threads,
    ``Callable[[T], Awaitable[R]]`` for tasks.
    """

    def __init__(
        self,
        limiter: Backpressure,
        func: F,
        ledger: _Ledger[T, R],
        on_result: Callable[[T, R], object] | None,
        progress: Callable[[BatchProgress], object] | None,
        wait: float | None,
        classify: ExceptionClassifier,
    ) -> None:
        self._limiter = limiter
        self._clock = limiter.clock
        self._func = func
        self._ledger = ledger
        self._on_result = on_result
        self._progress = progress
        self._wait = wait
        self._classify = classify


class _ThreadBatch(_Batch[T, R, Callable[[T], R]]):
    # Created per instance (run() is called once): the condition guards the
    # ledger; the deliver lock is held by a finishing worker across its
    # bookkeeping and callbacks, so that callbacks run one at a time and in
    # delivery order.
    _cond: threading.Condition
    _deliver_lock: threading.Lock

    def run(self, items: Iterable[T]) -> BatchReport[T]:
        self._cond = threading.Condition()
        self._deliver_lock = threading.Lock()
        start = self._clock()
        cond = self._cond
        ledger = self._ledger
        workers = _Workers(self._call)
        try:
            for index, item in enumerate(items):
                with cond:
                    while not ledger.stopped and not ledger.can_start(index):
                        cond.wait()
                    if ledger.stopped:
                        break
                    ledger.running += 1
                    ledger.waiting = 1
                try:
                    permit = self._acquire()
                except BackpressureError as exc:
                    with cond:
                        ledger.waiting = 0
                    self._finish(index, item, exc, failed=True)
                    continue
                except BaseException:
                    self._unreserve()
                    raise
                with cond:
                    ledger.waiting = 0
                if ledger.stopped:  # stopped while this item waited for its slot
                    permit.release(_IGNORED)
                    self._unreserve()
                    break
                try:
                    workers.submit(index, item, permit, ledger.running)
                except BaseException:
                    permit.release(_IGNORED)
                    self._unreserve()
                    raise
        except BaseException:
            with cond:
                ledger.stopped = True
            raise
        finally:
            workers.shutdown(0.0 if self._drain() else None)
        if ledger.error is not None:
            raise ledger.error
        return ledger.report(self._clock() - start)

    def _drain(self) -> bool:
        """Wait for the running calls: all of them, or :data:`STOP_GRACE` seconds once stopped.

        :returns: whether calls were left running after the grace.
        """
        cond = self._cond
        ledger = self._ledger
        deadline: float | None = None
        with cond:
            while ledger.running > 0:
                if not ledger.stopped:
                    cond.wait()  # a finishing call notifies
                    continue
                if deadline is None:
                    deadline = time.monotonic() + STOP_GRACE
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                cond.wait(remaining)
        return False

    def _unreserve(self) -> None:
        with self._cond:
            self._ledger.running -= 1
            self._ledger.waiting = 0

    def _acquire(self) -> Permit:
        # One unbroken wait, not slices: a slice that runs out counts as a
        # rejection in the limiter's statistics and loses the FIFO place.
        deadline = _SlotDeadline(self._wait)
        while True:
            try:
                return self._limiter.acquire(deadline.remaining())
            except QueueFullError as exc:  # noqa: PERF203 - the rare path; the loop is a retry
                time.sleep(deadline.pause(exc))

    def _call(self, index: int, item: T, permit: Permit) -> None:
        clock = self._clock
        start = clock()
        try:
            result = self._func(item)
        except BaseException as exc:
            try:
                _exception_outcome(self._limiter, permit, self._classify, exc, clock() - start)
            except BaseException as bug:  # a failing classifier stops the batch
                with self._cond:
                    self._ledger.fatal(bug)
            self._finish(index, item, exc, failed=True)
            return
        permit.release(_SUCCESS, latency=clock() - start)
        self._finish(index, item, result, failed=False)

    def _finish(self, index: int, item: T, value: object, *, failed: bool) -> None:
        ledger = self._ledger
        with self._deliver_lock:
            with self._cond:
                if failed:
                    ready = ledger.failed_with(index, item, value)  # type: ignore[arg-type]
                else:
                    ready = ledger.succeeded_with(index, item, value)  # type: ignore[arg-type]
                stopped = ledger.stopped
                snapshot = (
                    ledger.progress(self._limiter.window) if self._progress is not None else None
                )
                self._cond.notify()
            if stopped:
                return
            try:
                on_result = self._on_result
                if on_result is not None:
                    for done, result in ready:
                        on_result(done, result)
                if snapshot is not None:
                    self._progress(snapshot)  # type: ignore[misc]
            except BaseException as exc:
                with self._cond:
                    ledger.fatal(exc)
                    self._cond.notify()


class _Workers(Generic[T]):
    """Worker threads started on demand, fed through one queue.

    Lighter than a ``ThreadPoolExecutor``: no future per item.  The batch
    never submits more jobs than it has calls running, so the queue stays
    shorter than ``max_workers``.
    """

    def __init__(self, call: Callable[[int, T, Permit], None]) -> None:
        self._call = call
        self._jobs: queue.SimpleQueue[tuple[int, T, Permit] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, index: int, item: T, permit: Permit, running: int) -> None:
        """Queue a job; start a thread when fewer threads than *running* calls exist."""
        if len(self._threads) < running:
            thread = threading.Thread(
                target=self._work,
                name=f"backpressure-batch-{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._jobs.put((index, item, permit))

    def _work(self) -> None:
        get, call = self._jobs.get, self._call
        while True:
            job = get()
            if job is None:
                return
            call(*job)

    def shutdown(self, timeout: float | None = None) -> None:
        """Let the queued and running calls finish, then stop the threads.

        :param timeout: seconds to wait for them in all, or ``None`` for as
            long as they take; threads still running then are left to finish
            on their own (they are daemons).
        """
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


# -- tasks -------------------------------------------------------------------


async def arun_batch(
    limiter: Backpressure,
    func: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    ordered: bool = False,
    on_result: Callable[[T, R], object] | None = None,
    on_error: OnError = "raise",
    progress: Callable[[BatchProgress], object] | None = None,
    wait_timeout: float | None = None,
    max_workers: int | None = None,
    classify: ExceptionClassifier | ExceptionOutcomes | None = None,
) -> BatchReport[T]:
    """Await ``func(item)`` for every item, in anyio tasks, through *limiter*.

    The async twin of :func:`run_batch`, on asyncio or trio: each call runs in
    its own task of one task group, holding a slot, so at most
    ``min(window, max_workers)`` run at once.  *items* may be an async
    iterable.  Callbacks are plain functions, run in the event loop.

    With ``on_error="raise"`` the first failure cancels the calls still
    running (their slots are released as ``ignored``) and is raised.
    Cancelling the caller cancels the batch the same way.

    The parameters and the result are those of :func:`run_batch`;
    *max_workers* bounds the tasks at once (default: the limiter's
    ``congestion_window_max``).

    :raises Exception: with ``on_error="raise"``, the first call's exception;
        in any mode, an exception raised by *items*, a callback or the
        classifier.
    :raises LimiterStateError: the limiter is closed or not started.
    """
    workers, wait = _check_options(limiter, on_error, max_workers, wait_timeout)
    batch: _TaskBatch[T, R] = _TaskBatch(
        limiter,
        func,
        _Ledger(ordered, on_error == "collect", workers),
        on_result,
        progress,
        wait,
        resolve_classifier(classify),
    )
    return await batch.run(items)


class _TaskBatch(_Batch[T, R, Callable[[T], Awaitable[R]]]):
    _wakeup: anyio.Event | None = None
    _tg: TaskGroup | None = None

    async def run(self, items: Iterable[T] | AsyncIterable[T]) -> BatchReport[T]:
        start = self._clock()
        ledger = self._ledger
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if isinstance(items, AsyncIterable):
                iterator = aiter(items)
                try:
                    index = 0
                    async for item in iterator:
                        if not await self._dispatch(tg, index, item):
                            break
                        index += 1
                finally:
                    # An async generator left half-way is closed here, not by
                    # the garbage collector at some later point.
                    aclose = getattr(iterator, "aclose", None)
                    if aclose is not None:
                        with anyio.CancelScope(shield=True):
                            await aclose()
            else:
                for index, item in enumerate(items):
                    if not await self._dispatch(tg, index, item):
                        break
        if ledger.error is not None:
            raise ledger.error
        return ledger.report(self._clock() - start)

    async def _dispatch(self, tg: TaskGroup, index: int, item: T) -> bool:
        """Start the call for one item once the batch may; False once stopped."""
        ledger = self._ledger
        while not ledger.stopped and not ledger.can_start(index):
            self._wakeup = wakeup = anyio.Event()
            await wakeup.wait()
        if ledger.stopped:
            return False
        ledger.running += 1
        ledger.waiting = 1
        try:
            # Cancellable: a stopped batch cancels this wait with its task group.
            permit = await self._acquire()
        except BackpressureError as exc:
            ledger.waiting = 0
            self._finish(index, item, exc, failed=True)
            return True
        except BaseException:
            ledger.running -= 1
            ledger.waiting = 0
            raise
        ledger.waiting = 0
        if ledger.stopped:  # stopped while this item waited for its slot
            permit.release(_IGNORED)
            ledger.running -= 1
            return False
        tg.start_soon(self._call, index, item, permit)
        return True

    async def _acquire(self) -> Permit:
        deadline = _SlotDeadline(self._wait)
        while True:
            try:
                return await self._limiter.aacquire(deadline.remaining())
            except QueueFullError as exc:  # noqa: PERF203 - the rare path; the loop is a retry
                await anyio.sleep(deadline.pause(exc))

    async def _call(self, index: int, item: T, permit: Permit) -> None:
        clock = self._clock
        start = clock()
        try:
            result = await self._func(item)
        except BaseException as exc:
            try:
                _exception_outcome(self._limiter, permit, self._classify, exc, clock() - start)
            except BaseException as bug:
                self._stop(bug)
            if isinstance(exc, Exception):
                self._finish(index, item, exc, failed=True)
                return
            # Cancellation (and the like) belongs to whoever cancelled: pass it on.
            self._ledger.running -= 1
            self._wake()
            raise
        permit.release(_SUCCESS, latency=clock() - start)
        self._finish(index, item, result, failed=False)

    def _finish(self, index: int, item: T, value: object, *, failed: bool) -> None:
        ledger = self._ledger
        if failed:
            ready = ledger.failed_with(index, item, value)  # type: ignore[arg-type]
        else:
            ready = ledger.succeeded_with(index, item, value)  # type: ignore[arg-type]
        self._wake()
        if ledger.stopped:
            self._stop(None)
            return
        try:
            on_result = self._on_result
            if on_result is not None:
                for done, result in ready:
                    on_result(done, result)
            progress = self._progress
            if progress is not None:
                progress(ledger.progress(self._limiter.window))
        except BaseException as exc:
            self._stop(exc)

    def _stop(self, exc: BaseException | None) -> None:
        """Stop the batch: record *exc* (if any) and cancel the calls still running."""
        if exc is not None:
            self._ledger.fatal(exc)
        self._wake()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
