"""Starts, runs and stops a limiter's signal pollers.

Each signal has its own poller, so a slow or hanging signal never delays
another one, and no poller ever holds the limiter's lock for longer than a
``report_signal`` call, so no request waits for a signal.

Threads (``limiter.start()`` / ``with limiter:``)
    One daemon thread per signal (``backpressure-poller[...]``) keeps the
    cadence.  Each poll runs in a short-lived daemon worker thread of its own
    (``backpressure-poll[...]``), which the poller waits for at most the
    signal's timeout: a poll that hangs is abandoned (counted as a timeout,
    its result discarded), and the signal is not polled again until it
    returns.  ``close()`` wakes the pollers and joins them (0.25 s at most
    in all); it does not wait for worker threads.

anyio tasks (``await limiter.astart()`` / ``async with limiter:``)
    One task per signal, in a task group owned by the limiter, on asyncio or
    trio.  ``async def poll`` is awaited under a timeout; a plain ``poll`` is
    called through :func:`anyio.to_thread.run_sync` with
    ``abandon_on_cancel=True``.  ``aclose()`` cancels the group and returns as
    soon as its tasks have ended.

What closing guarantees: when ``close()`` / ``aclose()`` returns, no poller
reports to the limiter any more, every poller task has ended, and the poller
threads have ended (they only ever wait on an event that closing sets).  A
poll in flight is not interrupted: its worker thread ends when the signal's
``poll()`` returns, and then the signal is closed.  The built-in signals
(PromQL, scrape) bound their whole poll by their timeout, so their workers end
within it; an ``async def poll`` run from a thread is cancelled at its
timeout; a custom sync ``poll`` that hangs keeps its worker thread until it
returns.  Garbage-collecting an unclosed limiter stops its pollers as well
(they hold it weakly).

A signal's ``close()`` may be ``async def``: ``aclose()`` awaits it (shielded,
at most the signal's timeout); ``close()`` runs it to completion with
:func:`anyio.run` on the calling thread, or, when an event loop is running
there, on a short-lived helper thread that it joins.

The first poll happens at start; then one every cadence, measured from the
start of the previous poll.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._config import BackpressureConfig, FailurePolicy
from ._errors import ConfigError, LimiterStateError
from ._promql import PromQLSignal
from ._signals import (
    Reading,
    Signal,
    SignalError,
    SignalStats,
    SignalTracker,
    as_reading,
    default_query_timeout,
    default_stale_after,
    describe_exception,
    option_problems,
)

if TYPE_CHECKING:
    from ._limiter import Backpressure

__all__ = ["Signal", "Supervisor"]

_log = logging.getLogger("backpressure_client.signals")

#: How long ``stop()`` waits for poller threads, in total (seconds).
_JOIN_GRACE = 0.25


def _grace(timeout: float) -> float:
    """Extra seconds a poller waits past a signal's timeout.

    A signal that enforces its own timeout (the built-in ones do) then
    reports its own, more precise, error.
    """
    return min(0.5, 0.05 + 0.1 * timeout)


class _Call:
    """One poll handed to a worker thread."""

    __slots__ = ("_token", "done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self._token = threading.Lock()

    def claim(self) -> bool:
        """Whether this caller is the first to claim the call.

        The worker claims it to run the poll; a poller that was cancelled
        while waiting for a worker thread claims it so the poll never runs.
        """
        return self._token.acquire(blocking=False)


class _Runner:
    """The poller of one signal: its schedule, its deadlines, its bookkeeping."""

    def __init__(
        self,
        signal: Signal,
        *,
        limiter: Backpressure,
        cadence: float,
        timeout: float,
        stale_after: float,
        policy: FailurePolicy,
    ) -> None:
        self.signal = signal
        self.name: str = signal.name
        self.cadence = cadence
        self.timeout = timeout
        self.limit = timeout + _grace(timeout)
        self.is_async = inspect.iscoroutinefunction(signal.poll)
        self._limiter_ref = weakref.ref(limiter)
        self._clock = limiter.clock
        self.tracker = SignalTracker(
            self.name,
            limiter=limiter.name,
            cadence=cadence,
            timeout=timeout,
            stale_after=stale_after,
            policy=policy,
            clock=limiter.clock,
        )
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._stopping = False
        self._close_pending = False
        self._closed = False
        self._wake = threading.Event()
        self.thread: threading.Thread | None = None
        self._scope: anyio.CancelScope | None = None

    # -- shared --------------------------------------------------------------

    def _begin(self) -> SignalError | None:
        """Mark a poll as running, or say why it cannot start."""
        with self._lock:
            busy = self._busy_since
            if busy is None:
                self._busy_since = time.monotonic()
                return None
        return SignalError(
            "timeout",
            f"the previous poll has not returned after {time.monotonic() - busy:.3g} s "
            f"(timeout {self.timeout:.3g} s)",
        )

    def _end(self) -> None:
        with self._lock:
            self._busy_since = None
            close = self._close_pending
            self._close_pending = False
        if close:
            self._close_signal()

    def _call_blocking(self, call: _Call) -> None:
        """Run one poll to completion in the current (worker) thread.  Never raises."""
        if not call.claim():
            return  # the poller gave up before this thread started
        try:
            if self.is_async:
                call.result = anyio.run(self._poll_async_with_timeout)
            else:
                call.result = self.signal.poll()
        except BaseException as exc:  # a worker thread must not die noisily
            call.error = exc
        finally:
            call.done.set()
            self._end()
            self._wake.set()

    async def _poll_async_with_timeout(self) -> object:
        with anyio.fail_after(self.limit):
            return await self._await_poll()

    async def _await_poll(self) -> object:
        poll: Callable[[], Awaitable[object]] = self.signal.poll  # type: ignore[assignment]
        return await poll()

    def _complete(self, result: object, error: BaseException | None, duration: float) -> None:
        """Apply the failure policy to a finished poll and report the outcome."""
        now = self._clock()
        reading: Reading | None
        if error is None:
            try:
                reading = as_reading(result, now)
            except SignalError as exc:
                error = exc
            else:
                self._report(self.tracker.success(reading, duration))
                return
        self._fail(error, duration)

    def _fail(self, error: BaseException, duration: float | None) -> None:
        if not isinstance(error, SignalError):
            if isinstance(error, TimeoutError):
                error = SignalError("timeout", f"no answer within {self.timeout:.3g} s")
            else:
                error = SignalError("exception", describe_exception(error))
        reading = self.tracker.failure(error, duration)
        if reading is not None:
            self._report(reading)

    def _report(self, reading: Reading) -> None:
        limiter = self._limiter_ref()
        if limiter is None:
            return
        with self._lock:
            if self._stopping:
                return
            limiter.report_signal(self.name, firing=reading.firing, level=reading.level)

    @property
    def limiter(self) -> Backpressure | None:
        return self._limiter_ref()

    @property
    def alive(self) -> bool:
        return not self._stopping and self._limiter_ref() is not None

    # -- threads -------------------------------------------------------------

    def start_thread(self, limiter_name: str) -> None:
        self.thread = threading.Thread(
            target=self._thread_main,
            name=f"backpressure-poller[{limiter_name}:{self.name}]"[:120],
            daemon=True,
        )
        self.thread.start()

    def _thread_main(self) -> None:
        due = time.monotonic()
        while self.alive:
            self._poll_in_thread()
            due += self.cadence
            now = time.monotonic()
            if due < now:  # a poll overran its cadence: the next one is due now
                due = now
            self._sleep_until(due, lambda: False)

    def _poll_in_thread(self) -> None:
        busy = self._begin()
        if busy is not None:
            self._fail(busy, None)
            return
        call = _Call()
        started = time.monotonic()
        worker = threading.Thread(
            target=self._call_blocking,
            args=(call,),
            name=f"backpressure-poll[{self.name}]"[:120],
            daemon=True,
        )
        worker.start()
        self._sleep_until(started + self.limit, call.done.is_set)
        if not self.alive:
            return
        if call.done.is_set():
            self._complete(call.result, call.error, time.monotonic() - started)
        else:
            self._fail(TimeoutError(), time.monotonic() - started)

    def _sleep_until(self, deadline: float, done: Callable[[], bool]) -> None:
        """Wait until *deadline* (monotonic seconds), *done()* or stop."""
        while self.alive and not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.wait(remaining)
            self._wake.clear()

    # -- tasks ---------------------------------------------------------------

    async def run_task(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            due = anyio.current_time()
            while self.alive:
                await self._poll_in_task()
                due += self.cadence
                now = anyio.current_time()
                if due < now:
                    due = now
                await anyio.sleep_until(due)

    def cancel_task(self) -> None:
        """Cancel the poller task (from its event loop's thread only)."""
        scope = self._scope
        if scope is not None:
            scope.cancel()

    async def _poll_in_task(self) -> None:
        busy = self._begin()
        if busy is not None:
            self._fail(busy, None)
            return
        started = time.monotonic()
        if self.is_async:
            outcome: tuple[object, BaseException | None] | None = None
            try:
                with anyio.move_on_after(self.limit):
                    try:
                        outcome = (await self._await_poll(), None)
                    except Exception as exc:
                        outcome = (None, exc)
            finally:
                self._end()
            if not self.alive:
                return
            if outcome is None:
                self._fail(TimeoutError(), time.monotonic() - started)
            else:
                self._complete(outcome[0], outcome[1], time.monotonic() - started)
            return
        call = _Call()
        try:
            with anyio.move_on_after(self.limit):
                await anyio.to_thread.run_sync(self._call_blocking, call, abandon_on_cancel=True)
        finally:
            # Cancelled while waiting for a worker thread: the poll never ran.
            if call.claim():
                self._end()
        if not self.alive:
            return
        if call.done.is_set():
            self._complete(call.result, call.error, time.monotonic() - started)
        else:
            self._fail(TimeoutError(), time.monotonic() - started)

    # -- stopping --------------------------------------------------------------

    def stop(self) -> None:
        """Stop reporting and wake the poller (any thread)."""
        with self._lock:
            self._stopping = True
        self._wake.set()

    def close(self) -> None:
        """Close the signal now, or when its poll in flight returns."""
        with self._lock:
            if self._busy_since is not None:
                self._close_pending = True
                return
        self._close_signal()

    async def aclose(self) -> None:
        """Close the signal now, awaiting an ``async def close()``, or when its poll returns."""
        with self._lock:
            if self._busy_since is not None:
                self._close_pending = True
                return
        close = self._claim_close()
        if close is None:
            return
        try:
            with anyio.move_on_after(self.limit, shield=True):
                result = close()
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            self._close_failed(exc)

    def _claim_close(self) -> Callable[[], object] | None:
        """The signal's ``close``, to the first caller only (``None``: nothing to call)."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
        close = getattr(self.signal, "close", None)
        return close if callable(close) else None

    def _close_signal(self) -> None:
        close = self._claim_close()
        if close is None:
            return
        try:
            if inspect.iscoroutinefunction(close):
                _run_async(close, f"backpressure-close[{self.name}]")
            else:
                result = close()
                if inspect.isawaitable(result):
                    _run_async(lambda: result, f"backpressure-close[{self.name}]")
        except Exception as exc:
            self._close_failed(exc)

    def _close_failed(self, exc: BaseException) -> None:
        _log.warning(
            "backpressure signal %r: close() failed: %s", self.name, describe_exception(exc)
        )


def _event_loop_running_here() -> bool:
    """Whether an asyncio or trio event loop runs in the calling thread."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _run_async(fn: Callable[[], Awaitable[object]], thread_name: str) -> None:
    """Run *fn()* to completion from synchronous code.

    With :func:`anyio.run` in this thread, or, when an event loop already runs
    here (a sync ``close()`` called from async code), in a helper thread that
    is joined: an event loop cannot be nested.
    """

    async def main() -> None:
        await fn()

    if not _event_loop_running_here():
        anyio.run(main)
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    helper = threading.Thread(target=run, name=thread_name[:120], daemon=True)
    helper.start()
    helper.join()
    if errors:
        raise errors[0]


def _stop_all(runners: Sequence[_Runner]) -> None:
    for runner in runners:
        runner.stop()
        runner.close()


class Supervisor:
    """Owns a limiter's signal pollers (threads or anyio tasks).

    Built by :class:`~backpressure_client.Backpressure`: the PromQL queries
    of its configuration plus the signals passed to it.  Holds the limiter
    weakly.

    :raises ConfigError: naming every bad signal (no name, duplicate names,
        a timeout not below the cadence...).
    """

    def __init__(self, limiter: Backpressure, signals: Sequence[Signal]) -> None:
        config = limiter.config
        self._limiter_name = limiter.name
        self._enabled = config.enable_backpressure
        all_signals: list[Signal] = [
            PromQLSignal(query, url=config.backpressure_monitoring_url or "")
            for query in (config.backpressure_queries if config.backpressure_monitoring_url else ())
        ]
        all_signals.extend(signals)
        self._runners: tuple[_Runner, ...] = tuple(_runners(limiter, config, all_signals))
        self._lock = threading.Lock()
        self._state = "new"  # new -> threads | tasks -> stopped
        self._task_group: TaskGroup | None = None
        self._host: tuple[int, int] | None = None  # (thread id, task id) of astart()
        self._host_token: anyio.lowlevel.EventLoopToken | None = None
        self._finalizer = weakref.finalize(limiter, _stop_all, self._runners)

    @property
    def needs_start(self) -> bool:
        """Whether the limiter must be started before it admits requests."""
        return self._enabled and bool(self._runners)

    def signal_stats(self) -> tuple[SignalStats, ...]:
        """A snapshot of every signal's state: configuration-derived signals first."""
        return tuple(r.tracker.stats() for r in self._runners)

    def _claim(self, state: str) -> bool:
        with self._lock:
            if self._state != "new":
                return False
            if not self.needs_start:
                return False
            self._state = state
            return True

    def start(self) -> None:
        """Start one poller thread per signal (idempotent)."""
        if not self._claim("threads"):
            return
        for runner in self._runners:
            runner.start_thread(self._limiter_name)

    async def astart(self) -> None:
        """Start one anyio task per signal, in a task group of the calling task (idempotent).

        Stop them with :meth:`astop` from the same task.
        """
        if not self._claim("tasks"):
            return
        group = anyio.create_task_group()
        await group.__aenter__()
        self._task_group = group
        self._host = (threading.get_ident(), anyio.get_current_task().id)
        self._host_token = anyio.lowlevel.current_token()
        for runner in self._runners:
            group.start_soon(runner.run_task, name=f"backpressure poller {runner.name!r}")

    def stop(self) -> None:
        """Stop the pollers promptly (idempotent).

        :raises LimiterStateError: the pollers are anyio tasks (the limiter
            was started with ``astart()``): use ``aclose()`` instead.  Nothing
            is stopped then: the pollers go on until ``aclose()``.
        """
        with self._lock:
            state = self._state
            if state == "tasks":
                # The task group lives in the task that called astart(): only
                # an await from there can leave it.  Refuse before changing
                # anything, so the limiter stays whole for aclose().
                raise LimiterStateError(
                    f"limiter {self._limiter_name!r} was started with astart(); close it "
                    "with `await limiter.aclose()` (or use `async with limiter:`) in the "
                    "same task"
                )
            self._state = "stopped"
        self._stop_runners()
        for runner in self._runners:
            runner.close()
        self._join_threads()

    async def astop(self) -> None:
        """Async :meth:`stop`: ends the tasks started by :meth:`astart`, or stops threads.

        Awaits a signal's ``async def close()``; joins poller threads in a
        worker thread, never on the event loop.

        :raises LimiterStateError: called from another task than :meth:`astart`
            (the pollers are stopped all the same; the task group is left to
            the task that made it).
        """
        with self._lock:
            state = self._state
            group = self._task_group
            same_task = self._host == (threading.get_ident(), anyio.get_current_task().id)
            if state != "tasks" or same_task:
                self._state = "stopped"
                self._task_group = None
        if state == "tasks" and not same_task:
            self._stop_runners()
            await self._cancel_tasks_from_elsewhere()
            raise LimiterStateError(
                f"limiter {self._limiter_name!r}: aclose() must run in the task that called "
                "astart() (use `async with limiter:` to keep them together)"
            )
        self._stop_runners()
        if state == "threads":
            await anyio.to_thread.run_sync(self._join_threads)
        elif group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        for runner in self._runners:
            await runner.aclose()

    async def _cancel_tasks_from_elsewhere(self) -> None:
        """Cancel the poller tasks from another task than the host, thread-safely."""
        host, token = self._host, self._host_token
        if host is None or token is None:
            return
        if host[0] == threading.get_ident():
            self._cancel_tasks()  # the host's event loop: cancelling is safe here
            return

        # Another thread (and event loop): a CancelScope must only be touched
        # from its own loop, so hand the cancel to the host's loop.  The
        # pollers are already stopped; this only wakes them sooner.
        def hand_over() -> None:
            # An error means the host's loop has ended: nothing left to cancel.
            with contextlib.suppress(Exception):
                anyio.from_thread.run_sync(self._cancel_tasks, token=token)

        with anyio.move_on_after(_JOIN_GRACE):
            await anyio.to_thread.run_sync(hand_over, abandon_on_cancel=True)

    def _cancel_tasks(self) -> None:
        for runner in self._runners:
            runner.cancel_task()

    def _join_threads(self) -> None:
        deadline = time.monotonic() + _JOIN_GRACE
        for runner in self._runners:
            if runner.thread is not None:
                runner.thread.join(max(0.0, deadline - time.monotonic()))

    def _stop_runners(self) -> None:
        """Stop reporting and wake every poller; the signals stay open."""
        self._finalizer.detach()
        for runner in self._runners:
            runner.stop()
        for runner in self._runners:
            limiter = runner.limiter
            if limiter is not None:
                limiter.forget_signal(runner.name)


def _runners(
    limiter: Backpressure, config: BackpressureConfig, signals: Sequence[Signal]
) -> list[_Runner]:
    problems: list[str] = []
    runners: list[_Runner] = []
    seen: set[str] = set()
    for i, signal in enumerate(signals):
        where = f"signals[{i}]"
        name = getattr(signal, "name", None)
        poll = getattr(signal, "poll", None)
        if not isinstance(name, str) or not name:
            problems.append(f"{where}={signal!r}: needs a `name` attribute, a non-empty string")
            continue
        where = f"signal {name!r}"
        if not callable(poll):
            problems.append(f"{where}: needs a `poll()` method returning a Reading or a bool")
            continue
        if name in seen:
            problems.append(f"{where}: the name is used twice; give each signal its own name=")
            continue
        seen.add(name)
        cadence: Any = getattr(signal, "cadence", None)
        timeout: Any = getattr(signal, "timeout", None)
        stale_after: Any = getattr(signal, "stale_after", None)
        policy: Any = getattr(signal, "failure_policy", None)
        own = option_problems(cadence, timeout, stale_after, policy)
        if own:
            problems.extend(f"{where}: {p}" for p in own)
            continue
        # The defaults follow the signal's own cadence when it has one; on the
        # limiter's cadence they are config.effective_query_timeout / _stale_after.
        cadence = float(cadence) if cadence is not None else float(config.monitoring_cadence)
        if timeout is None:
            timeout = (
                config.query_timeout
                if config.query_timeout is not None
                else default_query_timeout(cadence)
            )
        timeout = float(timeout)
        if timeout >= cadence:
            problems.append(
                f"{where}: timeout {timeout:g} s must be below its cadence {cadence:g} s; "
                "set timeout= (or query_timeout) lower, or cadence= higher"
            )
            continue
        if stale_after is None:
            stale_after = (
                config.stale_after
                if config.stale_after is not None
                else default_stale_after(cadence)
            )
        runners.append(
            _Runner(
                signal,
                limiter=limiter,
                cadence=cadence,
                timeout=timeout,
                stale_after=float(stale_after),
                policy=policy if policy is not None else config.failure_policy,
            )
        )
        bind = getattr(signal, "_bind_timeout", None)
        if callable(bind):
            bind(timeout)
    if problems:
        raise ConfigError(problems)
    return runners
