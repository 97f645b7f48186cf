"""Many threads and tasks on one limiter: the invariants hold under contention.

The limiter under test is instrumented: every write of its in-flight count
(which happens under its lock, in every admission and release path) is checked
against the window *at that moment*, by the thread that holds the lock.  That
is the honest form of "admissions never exceed the window at admission time":
a check after the fact could not tell an admission over the window from a
window that shrank after the admission.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    Outcome,
    Permit,
    WindowPolicy,
)

LIVENESS = 60.0  # seconds: a bound for "this must finish", never an expectation
OUTCOMES = [Outcome.SUCCESS, Outcome.SUCCESS, Outcome.DROPPED, Outcome.IGNORED, "success"]


class OwnedLock:
    """A lock that knows which thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self.owner = threading.get_ident()
        return got

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class CheckedBackpressure(Backpressure):
    """A limiter whose in-flight count checks every write against the window."""

    def __init__(self, config: BackpressureConfig, **kwargs: Any) -> None:
        self.violations: list[str] = []
        self.writes = 0
        super().__init__(config, registry=None, **kwargs)
        lock = OwnedLock()
        self._lock = lock
        self._lock_acquire = lock.acquire
        self._lock_release = lock.release

    @property
    def _in_flight(self) -> int:
        return self.__dict__["_checked_in_flight"]

    @_in_flight.setter
    def _in_flight(self, value: int) -> None:
        old = self.__dict__.get("_checked_in_flight")
        self.__dict__["_checked_in_flight"] = value
        if old is None:  # the constructor's initial 0
            return
        self.writes += 1
        problems = []
        if not isinstance(self._lock, OwnedLock) or self._lock.owner != threading.get_ident():
            problems.append("in_flight written without holding the lock")
        if abs(value - old) != 1:
            problems.append(f"in_flight jumped {old} -> {value}")
        if value < 0:
            problems.append(f"in_flight went negative: {value}")
        w = self._window_state
        if not w.minimum <= w.size <= w.cap <= w.maximum:
            problems.append(f"window out of bounds: {w!r}")
        if value > old and self.enabled and value > w.size:
            problems.append(f"admitted request #{value} with the window at {w.size}")
        if problems:
            self.violations.extend(problems)


class HeldCounter:
    """Permits held at once, counted by the callers themselves."""

    def __init__(self, maximum: int) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.maximum = maximum
        self.over: list[int] = []

    def enter(self, permit: Permit) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            if self.now > self.maximum or permit.in_flight_at_admission > self.maximum:
                self.over.append(self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads every 10 us instead of 5 ms: far more interleavings per run."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def checked(minimum: int, maximum: int, **config: Any) -> CheckedBackpressure:
    cfg = BackpressureConfig(congestion_window_min=minimum, congestion_window_max=maximum, **config)
    return CheckedBackpressure(cfg, name="hammer")


def assert_settled(bp: CheckedBackpressure) -> None:
    assert bp.violations == []
    assert bp.writes > 0, "the instrumentation saw nothing"
    s = bp.stats()
    assert (s.in_flight, s.waiting) == (0, 0)
    assert s.admitted == s.success + s.dropped + s.ignored
    assert s.minimum <= s.window <= s.cap <= s.maximum


class Boom(Exception):
    pass


def signal_storm(bp: Backpressure, rng: random.Random) -> None:
    """One random signal reading: the window then moves under the callers' feet."""
    bp.report_signal(
        rng.choice(["cpu", "errors", "queue"]),
        firing=rng.random() < 0.3,
        level=rng.choice([0.0, 0.0, 0.0, 0.25, 0.5, 0.9]),
    )


@pytest.mark.usefixtures("busy_switching")
@pytest.mark.parametrize("policy", [WindowPolicy(), WindowPolicy.seed()], ids=["default", "seed"])
def test_threads_hammering_one_limiter_keep_every_invariant(policy: WindowPolicy) -> None:
    bp = checked(2, 12, window_policy=policy, max_waiters=8)
    held = HeldCounter(12)
    n_threads, ops = 32, 250  # callers; one more thread moves the signals
    barrier = threading.Barrier(n_threads + 2)
    stop = threading.Event()
    tallies: list[Counter[str]] = []
    errors: list[BaseException] = []

    def use(permit: Permit, rng: random.Random, tally: Counter[str]) -> None:
        held.enter(permit)
        if rng.random() < 0.3:
            time.sleep(0)  # yield the GIL while holding the slot
        held.leave()
        outcome = Outcome(rng.choice(OUTCOMES))
        assert permit.release(outcome, latency=0.001)
        tally[outcome.value] += 1
        assert not permit.release()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        tally: Counter[str] = Counter()
        tallies.append(tally)
        try:
            barrier.wait()
            for _ in range(ops):
                op = rng.random()
                try:
                    if op < 0.35:
                        use(bp.try_acquire(), rng, tally)
                    elif op < 0.55:
                        use(bp.acquire(timeout=rng.choice([0, 0.001, 5.0])), rng, tally)
                    elif op < 0.65:
                        first = bp.try_acquire()
                        try:
                            use(bp.try_acquire(), rng, tally)
                        finally:
                            use(first, rng, tally)
                    else:
                        raised = rng.choice([None, TimeoutError, Boom])
                        try:
                            with bp.slot(timeout=rng.choice([0, 5.0])) as permit:
                                held.enter(permit)
                                held.leave()
                                if raised is not None:
                                    raise raised()
                        except (TimeoutError, Boom):
                            pass
                        tally[
                            {None: "success", TimeoutError: "dropped", Boom: "ignored"}[raised]
                        ] += 1
                except BackpressureError:
                    tally["rejected"] += 1
        except BaseException as exc:
            errors.append(exc)

    def signaller() -> None:
        rng = random.Random(-1)
        barrier.wait()
        while not stop.is_set():
            signal_storm(bp, rng)
            stop.wait(0.0005)
        bp.report_signal("cpu", firing=False)
        bp.forget_signal("errors")
        bp.forget_signal("queue")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    threads.append(threading.Thread(target=signaller))
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads[:-1]:
        t.join(LIVENESS)
    stop.set()
    threads[-1].join(LIVENESS)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert held.over == []
    assert held.peak > 1, "no two requests ever overlapped: the test proved nothing"
    assert_settled(bp)
    total: Counter[str] = sum(tallies, Counter())
    s = bp.stats()
    assert (s.success, s.dropped, s.ignored, s.rejected) == (
        total["success"],
        total["dropped"],
        total["ignored"],
        total["rejected"],
    )
    assert s.window_increases > 0, "the window never grew"
    assert s.window_decreases > 0, "the window never shrank"


@pytest.mark.usefixtures("busy_switching")
def test_concurrent_double_release_releases_once() -> None:
    bp = checked(5, 5)
    rounds = 300
    start = threading.Barrier(3)
    end = threading.Barrier(3)
    current: list[Permit] = []
    results: list[bool] = []

    def releaser() -> None:
        for _ in range(rounds):
            start.wait()
            results.append(current[0].release())
            end.wait()

    threads = [threading.Thread(target=releaser) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(rounds):
        current[:] = [bp.try_acquire()]
        start.wait()
        end.wait()
        assert bp.in_flight == 0
    for t in threads:
        t.join(LIVENESS)
    assert results.count(True) == rounds
    assert results.count(False) == rounds
    assert bp.stats().success == rounds
    assert_settled(bp)


def test_a_release_racing_another_release_of_the_same_permit_loses() -> None:
    # Deterministic version of the race above: the first caller passes the
    # unlocked "already released?" check, then stalls before taking the lock
    # while a second caller releases the same permit.
    bp = checked(5, 5)
    permit = bp.try_acquire()
    real_acquire = bp._lock_acquire
    at_the_lock = threading.Event()
    go_on = threading.Event()
    stalled: list[threading.Thread] = []

    def acquire_lock(blocking: bool = True, timeout: float = -1) -> bool:
        if stalled and threading.current_thread() is stalled[0]:
            at_the_lock.set()
            assert go_on.wait(LIVENESS)
        return real_acquire(blocking, timeout)

    bp._lock_acquire = acquire_lock
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(permit.release(Outcome.DROPPED)))
    stalled.append(first)
    first.start()
    assert at_the_lock.wait(LIVENESS)
    assert permit.release(Outcome.SUCCESS) is True
    go_on.set()
    first.join(LIVENESS)
    assert results == [False]
    s = bp.stats()
    assert (s.in_flight, s.success, s.dropped) == (0, 1, 0)
    assert_settled(bp)


@pytest.mark.anyio
async def test_tasks_hammering_one_limiter_keep_every_invariant() -> None:
    bp = checked(2, 12, max_waiters=16)
    held = HeldCounter(12)
    rng = random.Random(7)
    scopes: list[anyio.CancelScope] = []
    done = anyio.Event()
    ops = 150

    async def use(permit: Permit) -> None:
        held.enter(permit)
        try:
            if rng.random() < 0.5:
                await anyio.lowlevel.checkpoint()
        finally:
            held.leave()
            permit.release(rng.choice(OUTCOMES))

    async def worker() -> None:
        for _ in range(ops):
            op = rng.random()
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                try:
                    if op < 0.3:
                        await use(bp.try_acquire())
                    elif op < 0.6:
                        await use(await bp.aacquire(timeout=rng.choice([0, 0.001, 5.0])))
                    else:
                        raised = rng.choice([None, TimeoutError, Boom])
                        try:
                            async with bp.slot(timeout=rng.choice([0, 5.0])) as permit:
                                held.enter(permit)
                                try:
                                    await anyio.lowlevel.checkpoint()
                                finally:
                                    held.leave()
                                if raised is not None:
                                    raise raised()
                        except (TimeoutError, Boom):
                            pass
                except BackpressureError:
                    pass
                finally:
                    scopes.remove(scope)
            await anyio.lowlevel.checkpoint()

    async def canceller() -> None:
        while not done.is_set():
            if scopes and rng.random() < 0.2:
                rng.choice(scopes).cancel()
            signal_storm(bp, rng)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(LIVENESS):
        async with anyio.create_task_group() as outer:
            outer.start_soon(canceller)
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(worker)
            done.set()
    bp.report_signal("cpu", firing=False)
    assert held.over == []
    assert held.peak > 1
    assert_settled(bp)
    assert bp.stats().ignored > 0


@pytest.mark.anyio
async def test_threads_and_tasks_waiting_on_one_limiter_all_get_through() -> None:
    bp = checked(3, 3, max_waiters=100)
    held = HeldCounter(3)
    per_caller = 40
    n_threads, n_tasks = 8, 16
    finished: Counter[str] = Counter()
    count_lock = threading.Lock()
    errors: list[BaseException] = []

    def thread_caller() -> None:
        try:
            for _ in range(per_caller):
                with bp.slot(timeout=LIVENESS) as permit:
                    held.enter(permit)
                    time.sleep(0)
                    held.leave()
                with count_lock:
                    finished["thread"] += 1
        except BaseException as exc:
            errors.append(exc)

    async def task_caller() -> None:
        for _ in range(per_caller):
            async with bp.slot(timeout=LIVENESS) as permit:
                held.enter(permit)
                await anyio.lowlevel.checkpoint()
                held.leave()
            with count_lock:
                finished["task"] += 1

    threads = [threading.Thread(target=thread_caller) for _ in range(n_threads)]
    with anyio.fail_after(LIVENESS):
        async with anyio.create_task_group() as tg:
            for t in threads:
                t.start()
            for _ in range(n_tasks):
                tg.start_soon(task_caller)
        for t in threads:
            await anyio.to_thread.run_sync(t.join)
    assert errors == []
    assert finished == {"thread": n_threads * per_caller, "task": n_tasks * per_caller}
    assert held.over == []
    assert_settled(bp)
    s = bp.stats()
    assert s.success == (n_threads + n_tasks) * per_caller
    assert s.rejected == 0
    assert s.wait_seconds > 0, "nobody ever waited: the test proved nothing"


def run_in_threads(n: int, fn: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIVENESS)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.usefixtures("busy_switching")
def test_signals_and_releases_racing_keep_the_window_in_bounds() -> None:
    bp = checked(1, 40, window_policy=WindowPolicy.seed())
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(400):
                if i % 4 == 0:
                    signal_storm(bp, rng)
                    continue
                with contextlib.suppress(BackpressureError):
                    bp.try_acquire().release(rng.choice(OUTCOMES))
        except BaseException as exc:
            errors.append(exc)

    run_in_threads(33, caller)
    assert errors == []
    bp.report_signal("cpu", firing=False)
    assert_settled(bp)
