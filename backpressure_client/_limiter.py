"""The limiter: the congestion window plus the requests in flight.

One lock-protected state serves threads and async tasks at the same time.  A
request is admitted while ``in_flight < window``; otherwise it is rejected at
once with :class:`~backpressure_client.BackpressureError`, or, in wait mode,
parked in one FIFO queue (threads and tasks alike) until a slot is handed to
it or its timeout passes.

The free-slot path takes the lock once to admit and once to release and
never touches an event loop: ``await limiter.aacquire()`` with a free slot
does not checkpoint.
"""

from __future__ import annotations

import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import anyio
from prometheus_client import REGISTRY, CollectorRegistry

from ._clock import Clock, monotonic
from ._config import BackpressureConfig
from ._errors import BackpressureError, LimiterStateError, QueueFullError, WaitTimeoutError
from ._metrics import register_limiter
from ._signals import SignalStats
from ._supervisor import Signal, Supervisor
from ._waiters import AsyncWaiter, ThreadWaiter, Waiter
from ._window import AIMDWindow, Outcome

__all__ = [
    "Backpressure",
    "ExceptionClassifier",
    "LimiterStats",
    "Permit",
    "classify_exception",
]

_SUCCESS: Final = Outcome.SUCCESS
_DROPPED: Final = Outcome.DROPPED
_IGNORED: Final = Outcome.IGNORED

_new_permit: Final = object.__new__

#: Maps an exception raised while a slot was held to an outcome.
ExceptionClassifier = Callable[[BaseException], Outcome]


def classify_exception(exc: BaseException) -> Outcome:
    """The default exception classifier.

    A :class:`TimeoutError` (the built-in, which ``socket.timeout`` is) is
    evidence of overload: ``dropped``.  Anything else, cancellation included,
    says nothing about the service: ``ignored``.
    """
    if isinstance(exc, TimeoutError):
        return Outcome.DROPPED
    return Outcome.IGNORED


@dataclass(frozen=True)
class LimiterStats:
    """A consistent snapshot of a limiter, taken under its lock.

    Counts are requests since the limiter was created; times are seconds.
    """

    name: str
    enabled: bool
    window: int
    in_flight: int
    waiting: int
    minimum: int
    maximum: int
    #: the window's upper bound after graded signals (``maximum`` when none).
    cap: int
    admitted: int
    rejected: int
    success: int
    dropped: int
    ignored: int
    window_increases: int
    window_decreases: int
    #: total seconds that callers spent waiting for a slot (by the limiter's clock).
    wait_seconds: float
    #: total seconds of the latencies reported on release, and how many were.
    latency_seconds: float
    latency_count: int
    #: names of the signals firing now.
    firing: tuple[str, ...]
    #: the highest graded level reported, in [0, 1].
    level: float


class Permit:
    """One admitted request's slot.

    Release it exactly once with :meth:`release`; further calls do nothing
    and return ``False``.  Prefer the :meth:`Backpressure.slot` context
    manager, which releases on every path.
    """

    __slots__ = ("_limiter", "in_flight_at_admission", "seq")

    def __init__(self, limiter: Backpressure, seq: int, in_flight: int) -> None:
        # None once released: one attribute fewer to set on the hot path.
        self._limiter: Backpressure | None = limiter
        #: the admission sequence number (strictly increasing per limiter).
        self.seq = seq
        #: requests in flight when this one was admitted, itself included.
        self.in_flight_at_admission = in_flight

    @property
    def released(self) -> bool:
        """Whether the slot has been given back."""
        return self._limiter is None

    def release(self, outcome: Outcome | str = _SUCCESS, *, latency: float | None = None) -> bool:
        """Give the slot back and report how the request ended.

        :param outcome: ``success``, ``dropped`` (evidence of overload) or
            ``ignored`` (no evidence either way).
        :param latency: the request's duration in seconds, when the caller
            measured it (the faces do); added to ``LimiterStats.latency_seconds``.
        :returns: ``True`` on the first call, ``False`` on any later one.
        :raises ValueError: if *outcome* is not an outcome.
        """
        if outcome is not _SUCCESS and outcome.__class__ is not Outcome:
            outcome = Outcome(outcome)
        limiter = self._limiter
        if limiter is None:
            return False
        limiter._lock_acquire()
        try:
            if self._limiter is None:  # released by another thread meanwhile
                return False
            self._limiter = None
            limiter._in_flight -= 1
            if latency is not None:
                limiter._latency_seconds += latency
                limiter._latency_count += 1
            if outcome is _SUCCESS:
                limiter._success += 1
                # Below the shortcut floor a success cannot move the window
                # (quiet, and too little of the window was in use): the
                # free-slot hot path skips the window call altogether.
                if self.in_flight_at_admission >= limiter._adjust_floor:
                    limiter._completed_locked(self, outcome)
            else:
                if outcome is _DROPPED:
                    limiter._dropped += 1
                else:
                    limiter._ignored += 1
                limiter._completed_locked(self, outcome)
            if not limiter._waiters:
                return True
            granted = limiter._dispatch_locked()
        finally:
            limiter._lock_release()
        limiter._wake(granted)
        return True

    def __repr__(self) -> str:
        limiter = self._limiter
        state = "released" if limiter is None else f"held, limiter {limiter.name!r}"
        return f"<Permit #{self.seq} {state}>"


class Backpressure:
    """An AIMD-windowed limiter of in-flight requests.

    :param config: the configuration; defaults to ``BackpressureConfig()``.
    :param name: a label for metrics, logs and errors.
    :param clock: returns monotonic seconds; replace it for virtual time.
    :param signals: extra backpressure signals, polled alongside the PromQL
        queries of *config*.
    :param registry: the prometheus_client registry that exposes this
        limiter's own metrics; ``None`` exposes none.

    A limiter with signals must be started (``with limiter:``,
    ``async with limiter:`` or :meth:`start`) before it admits requests, and
    closed afterwards; one without signals is ready at once.

    The window starts at ``congestion_window_min`` and stays within
    ``[min, max]``.  Use one limiter per protected service, shared by every
    thread and task that calls it.
    """

    def __init__(
        self,
        config: BackpressureConfig | None = None,
        *,
        name: str = "default",
        clock: Clock | None = None,
        signals: Sequence[Signal] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if config is None:
            config = BackpressureConfig()
        elif not isinstance(config, BackpressureConfig):
            raise TypeError(
                f"config must be a BackpressureConfig, got {type(config).__name__}; "
                "build one with BackpressureConfig(...) or BackpressureConfig.from_mapping(...)"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r}: must be a non-empty string")
        self.config: Final = config
        self.name: Final = name
        self._clock: Clock = clock if clock is not None else monotonic
        self._lock = threading.Lock()
        # Bound once: the hot paths call them without a method lookup.
        self._lock_acquire = self._lock.acquire
        self._lock_release = self._lock.release
        self._disabled = not config.enable_backpressure
        self._window_state = AIMDWindow(
            config.congestion_window_min, config.congestion_window_max, config.window_policy
        )
        self._in_flight = 0
        self._seq = 0
        self._waiters: deque[Waiter] = deque()
        self._ready = True
        self._closed = False
        self._gate = 0
        # Permit.release skips the window for successes admitted with fewer
        # requests in flight than this (see _refresh_gate_locked).
        self._adjust_floor = 0
        # Signal board: the latest reported state of each signal.
        self._signal_states: dict[str, tuple[bool, float]] = {}
        self._firing: tuple[str, ...] = ()
        self._any_firing = False
        self._level = 0.0
        self._reading = 0
        self._retry_until: float | None = None
        # Counters (read by metrics through stats()).
        self._abandoned = 0
        self._rejected = 0
        self._success = 0
        self._dropped = 0
        self._ignored = 0
        self._increases = 0
        self._decreases = 0
        self._wait_seconds = 0.0
        self._latency_seconds = 0.0
        self._latency_count = 0
        self._supervisor = Supervisor(self, signals)
        self._ready = not self._supervisor.needs_start
        self._refresh_gate_locked()
        if registry is not None:
            register_limiter(self, registry)

    # -- read-only views -------------------------------------------------

    @property
    def window(self) -> int:
        """The current congestion window, in requests."""
        return self._window_state.size

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._in_flight

    @property
    def enabled(self) -> bool:
        """False when ``enable_backpressure`` is off: every request is admitted."""
        return not self._disabled

    @property
    def firing(self) -> tuple[str, ...]:
        """Names of the signals firing now."""
        return self._firing

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` or :meth:`aclose` was called: no new requests are admitted."""
        return self._closed

    @property
    def clock(self) -> Clock:
        """The clock this limiter reads."""
        return self._clock

    @property
    def retry_after(self) -> float | None:
        """Seconds until a ``Retry-After`` hint passes, or ``None``."""
        until = self._retry_until
        if until is None:
            return None
        remaining = until - self._clock()
        return remaining if remaining > 0 else None

    def signal_stats(self) -> tuple[SignalStats, ...]:
        """A snapshot of each signal's state (last reading, errors, staleness), in order."""
        return self._supervisor.signal_stats()

    def stats(self) -> LimiterStats:
        """A consistent snapshot of the window, the counters and the signals."""
        with self._lock:
            w = self._window_state
            return LimiterStats(
                name=self.name,
                enabled=not self._disabled,
                window=w.size,
                in_flight=self._in_flight,
                waiting=len(self._waiters),
                minimum=w.minimum,
                maximum=w.maximum,
                cap=w.cap,
                # Sequence numbers of slots handed to waiters that gave up
                # never reached a caller.
                admitted=self._seq - self._abandoned,
                rejected=self._rejected,
                success=self._success,
                dropped=self._dropped,
                ignored=self._ignored,
                window_increases=self._increases,
                window_decreases=self._decreases,
                wait_seconds=self._wait_seconds,
                latency_seconds=self._latency_seconds,
                latency_count=self._latency_count,
                firing=self._firing,
                level=self._level,
            )

    # -- admission ---------------------------------------------------------

    def try_acquire(self) -> Permit:
        """Admit a request now or raise.

        :raises BackpressureError: the window is full (or callers are queued).
        :raises LimiterStateError: the limiter is closed or not started.
        """
        self._lock_acquire()  # explicit calls: `with lock:` costs twice as much here
        try:
            in_flight = self._in_flight
            if in_flight < self._gate:
                in_flight += 1
                self._in_flight = in_flight
                seq = self._seq
                self._seq = seq + 1
                # Permit(self, seq, in_flight) without the __init__ call: the
                # call costs a quarter of the whole admit+release path.
                permit = _new_permit(Permit)
                permit._limiter = self
                permit.seq = seq
                permit.in_flight_at_admission = in_flight
                return permit
            raise self._rejection_locked(BackpressureError)
        finally:
            self._lock_release()

    def acquire(self, timeout: float | None = None) -> Permit:
        """Admit a request, waiting up to *timeout* seconds for a slot.

        :param timeout: seconds to wait; ``None`` uses the configured
            ``wait_timeout``; ``0`` fails fast like :meth:`try_acquire`;
            ``math.inf`` waits until a slot comes or the limiter closes
            (batch jobs; prefer a finite wait on a request path).
        :raises BackpressureError: the window is full and no wait was asked.
        :raises WaitTimeoutError: no slot came free within *timeout*.
        :raises QueueFullError: ``max_waiters`` callers are waiting already.
        :raises LimiterStateError: the limiter is closed or not started.
        :raises ValueError: *timeout* is negative or NaN.
        """
        if timeout is not None:
            # Checked before the free-slot test: a bad value must not pass
            # unnoticed until the first time the window is full.
            timeout = self._timeout(timeout)
        self._lock_acquire()
        try:
            in_flight = self._in_flight
            if in_flight < self._gate:  # the free-slot path, as try_acquire
                in_flight += 1
                self._in_flight = in_flight
                seq = self._seq
                self._seq = seq + 1
                permit = _new_permit(Permit)
                permit._limiter = self
                permit.seq = seq
                permit.in_flight_at_admission = in_flight
                return permit
            wait = self._wait_or_raise_locked(timeout)
            waiter = ThreadWaiter()
            self._waiters.append(waiter)
            self._gate = 0
        finally:
            self._lock_release()
        start = self._clock()
        try:
            waiter.wait(wait)
        except BaseException:
            # KeyboardInterrupt and the like: a slot handed to us is passed on.
            self._abandon_wait(waiter, start)
            raise
        return self._settle_wait(waiter, start)

    async def aacquire(self, timeout: float | None = None) -> Permit:
        """Async :meth:`acquire`, for asyncio and trio (through anyio).

        With a free slot it returns without yielding to the event loop.
        Cancellation while waiting leaves no trace: a slot handed over in the
        meantime is passed on.

        :raises BackpressureError: as :meth:`acquire` (with its subclasses
            :class:`WaitTimeoutError` and :class:`QueueFullError`).
        :raises LimiterStateError: the limiter is closed or not started.
        :raises ValueError: *timeout* is negative or NaN.
        :raises TypeError: *timeout* is not a number.
        """
        if timeout is not None:
            timeout = self._timeout(timeout)
        self._lock_acquire()
        try:
            in_flight = self._in_flight
            if in_flight < self._gate:  # the free-slot path, as try_acquire
                in_flight += 1
                self._in_flight = in_flight
                seq = self._seq
                self._seq = seq + 1
                permit = _new_permit(Permit)
                permit._limiter = self
                permit.seq = seq
                permit.in_flight_at_admission = in_flight
                return permit
            wait = self._wait_or_raise_locked(timeout)
            # Rare path: build the loop-bound waiter and queue it.
            waiter = AsyncWaiter()
            self._waiters.append(waiter)
            self._gate = 0
        finally:
            self._lock_release()
        start = self._clock()
        try:
            with anyio.move_on_after(wait):
                await waiter.wait()
        except BaseException:
            # Cancelled: a slot handed to us in the meantime is passed on.
            self._abandon_wait(waiter, start)
            raise
        return self._settle_wait(waiter, start)

    def slot(
        self, timeout: float | None = None, *, classify: ExceptionClassifier | None = None
    ) -> _Slot:
        """A context manager holding one slot for the block's duration.

        The slot is released on exit: as ``success`` when the block ends
        normally (unless released inside it), otherwise as *classify* maps
        the exception (default :func:`classify_exception`).  Use ``with`` for
        threads and ``async with`` for tasks.  The returned object holds one
        slot at a time: entering it again while held raises ``RuntimeError``;
        call ``slot()`` for each block.
        """
        return _Slot(self, timeout, classify or classify_exception)

    # -- signals and hints ---------------------------------------------------

    def report_signal(self, name: str, *, firing: bool, level: float = 0.0) -> None:
        """Record a fresh reading of signal *name*.

        Signal pollers call this once per reading; custom integrations may
        call it too.  A firing reading lets the window shrink once more (see
        ``WindowPolicy.decrease_once_per_reading``); *level* (graded signals,
        in [0, 1]) caps the window at ``floor(max * (1 - level))``, the
        highest level across signals winning.

        :raises ValueError: *name* is not a non-empty string, or *level* is
            outside [0, 1].
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r}: a signal name must be a non-empty string")
        if not (0.0 <= level <= 1.0):
            raise ValueError(f"level={level!r}: must be in [0, 1]")
        with self._lock:
            self._signal_states[name] = (bool(firing), float(level))
            if firing:
                self._reading += 1
            self._board_changed_locked()

    def forget_signal(self, name: str) -> None:
        """Drop signal *name* from the board (for example when its poller stops)."""
        with self._lock:
            if self._signal_states.pop(name, None) is not None:
                self._board_changed_locked()

    def _board_changed_locked(self) -> None:
        states = self._signal_states
        self._firing = tuple(n for n, (f, _) in states.items() if f)
        self._any_firing = bool(self._firing)
        level = max((lv for _, lv in states.values()), default=0.0)
        if level != self._level:
            self._level = level
            old = self._window_state.size
            if self._window_state.set_level(level) < old:
                self._decreases += 1
        # Firing and the cap both feed the release shortcut.
        self._refresh_gate_locked()

    def set_retry_after(self, seconds: float) -> None:
        """Tell rejections to suggest retrying after *seconds* from now.

        The latest deadline wins until it passes.  Transports call this with
        a response's ``Retry-After`` header.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds={seconds!r}: must be a finite number >= 0")
        with self._lock:
            until = self._clock() + seconds
            if self._retry_until is None or until > self._retry_until:
                self._retry_until = until

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start polling the signals in background threads.  Idempotent.

        Not needed for a limiter without signals.  Prefer ``with limiter:``.

        :raises LimiterStateError: the limiter is closed.
        """
        self._check_open()
        self._supervisor.start()
        self._mark_ready()

    async def astart(self) -> None:
        """Start polling the signals in anyio tasks (asyncio or trio).  Idempotent.

        Prefer ``async with limiter:``; a limiter started this way must be
        closed with :meth:`aclose` in the same task.

        :raises LimiterStateError: the limiter is closed.
        """
        self._check_open()
        await self._supervisor.astart()
        self._mark_ready()

    def close(self) -> None:
        """Stop the signal pollers and turn away waiting and new callers.

        Returns promptly (well under a second): pollers are not waited for
        beyond a short grace period.  Requests in flight may still release
        their slots.  Idempotent.
        """
        # The supervisor refuses (raises) before anything changes when the
        # pollers run as tasks of an event loop: they need aclose().
        self._supervisor.stop()
        self._shut()

    async def aclose(self) -> None:
        """Async :meth:`close`; stops pollers started by :meth:`astart` too."""
        self._shut()
        await self._supervisor.astop()

    def __enter__(self) -> Backpressure:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Backpressure:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise LimiterStateError(f"limiter {self.name!r} is closed; create a new one")

    def _mark_ready(self) -> None:
        with self._lock:
            if not self._closed:
                self._ready = True
                self._refresh_gate_locked()

    def _shut(self) -> None:
        with self._lock:
            self._closed = True
            self._ready = False
            waiters = list(self._waiters)
            self._waiters.clear()
            self._refresh_gate_locked()
            for waiter in waiters:
                waiter.closed = True
        for waiter in waiters:
            waiter.wake()

    def __repr__(self) -> str:
        if self._disabled:
            return (
                f"<Backpressure {self.name!r} disabled: admits everything "
                f"(in_flight={self._in_flight})>"
            )
        w = self._window_state
        firing = f" firing={list(self._firing)}" if self._firing else ""
        state = " closed" if self._closed else ""
        return (
            f"<Backpressure {self.name!r}{state} window={w.size} in_flight={self._in_flight} "
            f"range=[{w.minimum}, {w.maximum}]{firing}>"
        )

    # -- internals -----------------------------------------------------------

    def _timeout(self, timeout: float) -> float:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout={timeout!r}: must be a number of seconds")
        # math.inf is allowed on purpose: a batch job waits as long as it
        # takes (its caller can still cancel it); NaN and negatives are not.
        if math.isnan(timeout) or timeout < 0:
            raise ValueError(
                f"timeout={timeout!r}: must be a number of seconds >= 0 (math.inf: no limit)"
            )
        return float(timeout)

    def _wait_or_raise_locked(self, timeout: float | None) -> float:
        """For a caller that found no free slot: the seconds it may wait, or raise."""
        wait = self.config.wait_timeout if timeout is None else timeout
        if not self._ready or wait <= 0:
            raise self._rejection_locked(BackpressureError)
        if len(self._waiters) >= self.config.max_waiters:
            raise self._rejection_locked(QueueFullError)
        return float(wait)

    def _settle_wait(self, waiter: Waiter, start: float) -> Permit:
        """Turn a wait that ended (woken or timed out) into a permit or an error."""
        with self._lock:
            self._wait_seconds += max(0.0, self._clock() - start)
            if waiter.granted:
                return Permit(self, waiter.seq, waiter.in_flight)
            if not waiter.closed:
                self._waiters.remove(waiter)
                self._refresh_gate_locked()
            raise self._rejection_locked(WaitTimeoutError)

    def _abandon_wait(self, waiter: Waiter, start: float) -> None:
        """Undo a wait that was interrupted, leaving no trace and no lost slot."""
        granted: list[Waiter] = []
        with self._lock:
            self._wait_seconds += max(0.0, self._clock() - start)
            if waiter.granted:
                # Its sequence number stays unused: admitted counts only
                # permits that reached a caller.
                self._abandoned += 1
                self._in_flight -= 1
                granted = self._dispatch_locked()
            elif not waiter.closed:
                self._waiters.remove(waiter)
                self._refresh_gate_locked()
        self._wake(granted)

    def _rejection_locked(self, kind: type[BackpressureError]) -> Exception:
        if self._closed:
            return LimiterStateError(f"limiter {self.name!r} is closed; no new requests")
        if not self._ready:
            return LimiterStateError(
                f"limiter {self.name!r} has signals and is not started; use "
                "`with limiter:` / `async with limiter:` or call limiter.start() first"
            )
        self._rejected += 1
        until = self._retry_until
        retry_after = None
        if until is not None:
            remaining = until - self._clock()
            if remaining > 0:
                retry_after = remaining
            else:
                self._retry_until = None
        return kind(
            window=self._window_state.size,
            in_flight=self._in_flight,
            firing=self._firing,
            retry_after=retry_after,
            limiter=self.name,
        )

    def _dispatch_locked(self) -> list[Waiter]:
        """Hand free slots to waiters in FIFO order; return them, to be woken."""
        granted = []
        waiters = self._waiters
        size = self._window_state.size
        while waiters and self._in_flight < size:
            waiter = waiters.popleft()
            self._in_flight += 1
            waiter.seq = self._seq
            self._seq += 1
            waiter.in_flight = self._in_flight
            waiter.granted = True
            granted.append(waiter)
        self._refresh_gate_locked()
        return granted

    def _wake(self, granted: list[Waiter]) -> None:
        """Wake waiters handed a slot (outside the lock).

        A waiter that cannot be woken (its event loop is closed or finished)
        never takes its slot: the grant is undone and the slot passed on, so
        a dead loop costs the limiter nothing and a release never raises.
        """
        while granted:
            undelivered = [waiter for waiter in granted if not waiter.wake()]
            if not undelivered:
                return
            with self._lock:
                for waiter in undelivered:
                    waiter.granted = False
                    waiter.closed = True  # its own settle, if it ever runs, must not requeue
                    self._abandoned += 1
                    self._in_flight -= 1
                granted = self._dispatch_locked()

    def _refresh_gate_locked(self) -> None:
        """Recompute the hot paths' thresholds after any change to their inputs.

        The inputs: the window, the queue, the signals, the limiter's state.

        ``in_flight < _gate`` is the whole free-slot test: the gate is 0 while
        callers queue (FIFO: no overtaking) or the limiter is not usable,
        unbounded when disabled, and the window otherwise.

        ``in_flight_at_admission >= _adjust_floor`` is the whole test for
        whether a success may move the window: never when disabled, always
        while a signal fires, otherwise from the window's grow floor on.
        """
        if not self._ready or self._waiters:
            self._gate = 0
        elif self._disabled:
            self._gate = sys.maxsize
        else:
            self._gate = self._window_state.size
        if self._disabled:
            self._adjust_floor = sys.maxsize
        elif self._any_firing:
            self._adjust_floor = 0
        else:
            self._adjust_floor = self._window_state.grow_floor

    def _completed_locked(self, permit: Permit, outcome: Outcome) -> None:
        """Let a completed request move the window (counters are the caller's)."""
        if self._disabled:
            return
        window = self._window_state
        old = window.size
        new = window.on_completion(
            outcome,
            permit.seq,
            permit.in_flight_at_admission,
            self._any_firing,
            self._reading,
            self._seq,
        )
        if new > old:
            self._increases += 1
        elif new < old:
            self._decreases += 1
        # The grow floor moves with the window even when its size does not.
        self._refresh_gate_locked()


class _Slot:
    """``with limiter.slot():`` / ``async with limiter.slot():``."""

    __slots__ = ("_classify", "_limiter", "_permit", "_timeout")

    def __init__(
        self, limiter: Backpressure, timeout: float | None, classify: ExceptionClassifier
    ) -> None:
        self._limiter = limiter
        self._timeout = timeout
        self._classify = classify
        self._permit: Permit | None = None

    def _check_free(self) -> None:
        # One object holds one permit: sharing it between concurrent blocks
        # (the semaphore habit) would release the wrong permit and lose one.
        if self._permit is not None:
            raise RuntimeError(
                "this limiter.slot() object is already held; call limiter.slot() for each "
                "block (it is cheap) instead of sharing one object between blocks"
            )

    def __enter__(self) -> Permit:
        self._check_free()
        self._permit = self._limiter.acquire(self._timeout)
        return self._permit

    async def __aenter__(self) -> Permit:
        self._check_free()
        self._permit = await self._limiter.aacquire(self._timeout)
        return self._permit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._permit
        if permit is None:
            return
        self._permit = None
        if exc is None:
            permit.release(_SUCCESS)
            return
        outcome: Outcome = _IGNORED
        try:
            outcome = Outcome(self._classify(exc))
        finally:
            # A classifier that raises or returns a non-outcome is a bug to
            # report, but it must not cost the limiter a slot.
            permit.release(outcome)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
