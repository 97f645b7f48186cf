"""Starting and stopping the signal pollers: threads, anyio tasks, prompt shutdown."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest
from _stub_servers import Canned, StubServer, vector, wait_for

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    ConfigError,
    LimiterStateError,
)
from backpressure_client._clock import ManualClock
from backpressure_client._promql import PromQLSignal
from backpressure_client._signals import Reading, function_signal

CONFIG = BackpressureConfig(congestion_window_min=2, congestion_window_max=20)


class Counting:
    """A signal that counts its polls and answers what the test says."""

    def __init__(
        self,
        name: str,
        answer: Callable[[], Reading | bool] = lambda: False,
        cadence: float | None = 0.05,
    ) -> None:
        self.name = name
        self.cadence = cadence
        self.polls = 0
        self.closed = 0
        self._answer = answer

    def poll(self) -> Reading | bool:
        self.polls += 1
        return self._answer()

    def close(self) -> None:
        self.closed += 1


class Hanging:
    """A sync signal whose poll blocks until released (or 10 s)."""

    def __init__(self, name: str = "hanging") -> None:
        self.name = name
        self.cadence = 0.2
        self.timeout = 0.05
        self.release = threading.Event()
        self.started = threading.Event()

    def poll(self) -> bool:
        self.started.set()
        self.release.wait(10)
        return True


class AsyncHanging:
    """An async signal that never answers."""

    name = "async-hanging"
    cadence = 0.2
    timeout = 0.05

    def __init__(self) -> None:
        self.started = 0

    async def poll(self) -> bool:
        self.started += 1
        await anyio.sleep(60)
        return True


def backpressure_threads() -> list[str]:
    """Every live thread this package started: pollers, poll workers, helpers."""
    return [t.name for t in threading.enumerate() if t.name.startswith("backpressure-")]


def poller_threads() -> list[str]:
    return [name for name in backpressure_threads() if name.startswith("backpressure-poller")]


def threads_of(signal_name: str) -> list[str]:
    """The live backpressure threads serving the signal named *signal_name*."""
    return [name for name in backpressure_threads() if signal_name in name]


def limiter(*signals: object, config: BackpressureConfig = CONFIG) -> Backpressure:
    return Backpressure(config, signals=signals, registry=None)  # type: ignore[arg-type]


# -- threads --------------------------------------------------------------------------


def test_a_limiter_with_signals_must_be_started() -> None:
    lim = limiter(Counting("s"))
    with pytest.raises(LimiterStateError, match="not started"):
        lim.try_acquire()
    with lim:
        lim.try_acquire().release()
    with pytest.raises(LimiterStateError, match="closed"):
        lim.try_acquire()
    with pytest.raises(LimiterStateError, match="closed"):
        lim.start()


def test_the_first_poll_happens_at_start() -> None:
    sig = Counting("slow cadence", cadence=60.0)
    with limiter(sig):
        wait_for(lambda: sig.polls == 1, 2, what="the first poll")
        time.sleep(0.1)
        assert sig.polls == 1


def test_each_signal_keeps_its_own_cadence() -> None:
    fast = Counting("fast", cadence=0.05)
    slow = Counting("slow", cadence=None)  # the config's cadence: 60 s
    with limiter(fast, slow):
        wait_for(lambda: fast.polls >= 5, 5, what="five fast polls")
    assert slow.polls == 1


def test_close_stops_the_threads_promptly_even_while_a_signal_hangs() -> None:
    hanging = Hanging()
    other = Counting("other")
    lim = limiter(hanging, other)
    lim.start()
    assert hanging.started.wait(2)
    assert len(poller_threads()) == 2
    start = time.monotonic()
    lim.close()
    assert time.monotonic() - start < 0.5
    assert poller_threads() == []
    assert other.closed == 1
    hanging.release.set()


def test_a_hanging_signal_never_delays_another_nor_a_request() -> None:
    hanging = Hanging()
    other = Counting("other")
    lim = limiter(hanging, other)
    with lim:
        assert hanging.started.wait(2)
        before = other.polls
        t0 = time.monotonic()
        lim.try_acquire().release()
        assert time.monotonic() - t0 < 0.5  # not the 10 s the poll hangs
        wait_for(lambda: other.polls >= before + 4, 5, what="the other signal's polls")
        wait_for(lambda: lim.signal_stats()[0].errors >= 1, 5, what="the hanging poll's timeout")
        stats = {s.name: s for s in lim.signal_stats()}
        assert stats["hanging"].errors_by_reason["timeout"] >= 1
        assert stats["other"].errors == 0
    hanging.release.set()


def test_a_hanging_poll_is_not_started_again_until_it_returns() -> None:
    hanging = Hanging()
    calls: list[int] = []
    original = hanging.poll

    def poll() -> bool:
        calls.append(1)
        return original()

    hanging.poll = poll  # type: ignore[method-assign]
    with limiter(hanging) as lim:
        wait_for(lambda: lim.signal_stats()[0].errors >= 3, 5, what="three cadences of errors")
        assert len(calls) == 1
    hanging.release.set()


def test_start_and_close_are_idempotent() -> None:
    lim = limiter(Counting("s"))
    lim.start()
    lim.start()
    assert len(poller_threads()) == 1
    lim.close()
    lim.close()
    assert poller_threads() == []


def test_a_limiter_dropped_without_close_stops_its_threads() -> None:
    sig = Counting("orphan")
    lim = limiter(sig)
    lim.start()
    wait_for(lambda: sig.polls >= 1, 2)
    del lim
    gc.collect()
    wait_for(lambda: poller_threads() == [], 1, what="the poller thread to end")
    assert sig.closed == 1


def test_a_disabled_limiter_polls_nothing_and_needs_no_start() -> None:
    sig = Counting("s")
    lim = limiter(sig, config=CONFIG.replace(enable_backpressure=False))
    lim.try_acquire().release()
    with lim:
        time.sleep(0.1)
    assert sig.polls == 0
    assert sig.closed == 1


def test_bad_signals_are_reported_together() -> None:
    class NoPoll:
        name = "no-poll"

    with pytest.raises(ConfigError) as info:
        limiter(
            object(),
            NoPoll(),
            Counting("dup"),
            Counting("dup"),
            function_signal("slow-timeout", lambda: True, cadence=1.0, timeout=2.0),
        )
    problems = info.value.problems
    assert len(problems) == 4
    assert "needs a `name`" in problems[0]
    assert "poll()" in problems[1]
    assert "used twice" in problems[2]
    assert "must be below its cadence" in problems[3]


def test_readings_reach_the_window_boolean_and_graded_mixed() -> None:
    level = Reading(firing=False, level=0.5, value=7.0)
    with limiter(Counting("boolean", lambda: True), Counting("graded", lambda: level)) as lim:
        wait_for(
            lambda: lim.stats().cap == 10 and lim.firing == ("boolean",),
            2,
            what="the graded cap and the boolean signal",
        )
        assert lim.stats().level == 0.5
    assert lim.firing == ()  # the board is cleared on close


def test_the_failure_policy_keeps_then_drops_a_failing_signal() -> None:
    answers: list[object] = [True]

    def answer() -> bool:
        item = answers[-1]
        if isinstance(item, Exception):
            raise item
        return bool(item)

    # Staleness is measured by the limiter's clock: virtual here, so a slow
    # runner cannot make the kept reading go stale early.
    clock = ManualClock()
    sig = function_signal("flaky", answer, cadence=0.05, stale_after=0.4)
    lim = Backpressure(CONFIG, signals=[sig], registry=None, clock=clock)
    with lim:
        wait_for(lambda: lim.firing == ("flaky",), 5)
        answers.append(RuntimeError("backend gone"))
        wait_for(lambda: lim.signal_stats()[0].errors >= 3, 5, what="failed polls")
        assert lim.firing == ("flaky",)  # the last reading still counts
        assert not lim.signal_stats()[0].stale
        clock.advance(0.5)
        wait_for(lambda: lim.firing == (), 5, what="fail_open")
        lim.try_acquire().release()  # requests go on
        stats = lim.signal_stats()[0]
        assert stats.stale
        assert stats.errors_by_reason["exception"] >= 3


def test_fail_closed_counts_a_failing_signal_as_firing() -> None:
    def broken() -> bool:
        raise RuntimeError("no")

    sig = function_signal("broken", broken, cadence=0.05, failure_policy="fail_closed")
    with limiter(sig) as lim:
        wait_for(lambda: lim.firing == ("broken",), 2)


def test_garbage_from_a_signal_is_a_failure() -> None:
    sig = function_signal("garbage", lambda: "yes", cadence=0.05)  # type: ignore[arg-type, return-value]
    with limiter(sig) as lim:
        wait_for(lambda: lim.signal_stats()[0].errors >= 1, 2)
        assert lim.signal_stats()[0].errors_by_reason["response"] >= 1


def test_an_async_signal_runs_in_a_thread_for_a_threaded_limiter() -> None:
    async def read() -> bool:
        await anyio.lowlevel.checkpoint()
        return True

    with limiter(function_signal("async", read, cadence=0.05)) as lim:
        wait_for(lambda: lim.firing == ("async",), 2)


# -- anyio tasks ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_with_polls_in_tasks_and_stops_promptly() -> None:
    fast = Counting("fast")
    hanging = Hanging()
    ahanging = AsyncHanging()
    lim = limiter(fast, hanging, ahanging)
    with pytest.raises(LimiterStateError, match="not started"):
        await lim.aacquire()
    async with lim:

        def timeouts(name: str) -> int:
            stats = {s.name: s for s in lim.signal_stats()}
            return stats[name].errors_by_reason["timeout"]

        with anyio.fail_after(10):
            while (  # noqa: ASYNC110 - polling the limiter is the test
                fast.polls < 5 or timeouts("hanging") < 2 or timeouts("async-hanging") < 2
            ):
                await anyio.sleep(0.02)
        assert poller_threads() == []  # tasks, not threads
        (await lim.aacquire()).release()
        start = time.monotonic()
    assert time.monotonic() - start < 1.0
    assert fast.closed == 1
    polls = fast.polls
    await anyio.sleep(0.3)
    assert fast.polls <= polls + 1  # a poll in flight may finish; no new one starts
    hanging.release.set()


@pytest.mark.anyio
async def test_async_signals_are_awaited_in_the_event_loop() -> None:
    seen: list[int] = []

    async def read() -> Reading:
        seen.append(threading.get_ident())
        return Reading(firing=False, level=0.25)

    async with limiter(function_signal("a", read, cadence=0.05)) as lim:
        with anyio.fail_after(2):
            while lim.stats().level != 0.25:  # noqa: ASYNC110 - polling the limiter is the test
                await anyio.sleep(0.01)
    assert set(seen) == {threading.get_ident()}


@pytest.mark.anyio
async def test_astart_and_aclose_are_idempotent_and_close_tasks() -> None:
    sig = Counting("s")
    lim = limiter(sig)
    await lim.astart()
    await lim.astart()
    lim.start()  # already started as tasks: nothing more
    assert poller_threads() == []
    await lim.aclose()
    await lim.aclose()
    assert sig.closed == 1


@pytest.mark.anyio
async def test_aclose_from_another_task_says_how_to_fix_it() -> None:
    sig = Counting("s")
    lim = limiter(sig)
    await lim.astart()
    errors: list[BaseException] = []

    async def close_elsewhere() -> None:
        try:
            await lim.aclose()
        except LimiterStateError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(close_elsewhere)
    assert len(errors) == 1
    assert "task that called astart()" in str(errors[0])
    polls = sig.polls
    await anyio.sleep(0.3)
    assert sig.polls <= polls + 1  # the pollers were stopped all the same
    await lim.aclose()  # the right task can still leave the group


@pytest.mark.anyio
async def test_sync_close_of_an_async_started_limiter_says_to_use_aclose() -> None:
    sig = Counting("s")
    lim = limiter(sig)
    await lim.astart()
    with pytest.raises(LimiterStateError, match="aclose"):
        lim.close()
    # Refused before anything changed: the pollers go on, aclose() still works.
    polls = sig.polls
    with anyio.fail_after(5):
        while sig.polls < polls + 2:  # noqa: ASYNC110 - polling the signal is the test
            await anyio.sleep(0.02)
    assert sig.closed == 0
    await lim.aclose()
    assert sig.closed == 1


@pytest.mark.anyio
async def test_a_threaded_start_can_be_closed_with_aclose() -> None:
    lim = limiter(Counting("s"))
    lim.start()
    assert len(poller_threads()) == 1
    await lim.aclose()
    assert poller_threads() == []


@pytest.mark.anyio
async def test_a_poll_waiting_for_a_worker_thread_times_out_and_polls_resume() -> None:
    # The application holds every worker thread: the poll cannot even start.
    thread_limiter = anyio.to_thread.current_default_thread_limiter()
    saved = thread_limiter.total_tokens
    thread_limiter.total_tokens = 1
    try:
        await _starve_and_recover()
    finally:
        thread_limiter.total_tokens = saved


async def _starve_and_recover() -> None:
    hold = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: anyio.to_thread.run_sync(hold.wait, abandon_on_cancel=True))
        await anyio.sleep(0.05)
        sig = function_signal("starved", lambda: True, cadence=0.1, timeout=0.05)
        async with limiter(sig) as lim:
            with anyio.fail_after(3):
                while lim.signal_stats()[0].errors < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert lim.signal_stats()[0].errors_by_reason["timeout"] >= 2
            hold.set()
            with anyio.fail_after(3):
                while lim.firing != ("starved",):  # noqa: ASYNC110
                    await anyio.sleep(0.02)


# -- what closing guarantees about threads ----------------------------------------------


def test_close_ends_the_pollers_and_a_hanging_workers_thread_ends_once_released() -> None:
    hanging = Hanging("hanging-worker")
    lim = limiter(hanging, Counting("worker-other"))
    lim.start()
    assert hanging.started.wait(2)
    lim.close()
    assert [n for n in poller_threads() if "hanging-worker" in n or "worker-other" in n] == []
    # The custom poll still hangs: its worker thread is the only one left.
    assert threads_of("hanging-worker") == ["backpressure-poll[hanging-worker]"]
    hanging.release.set()
    wait_for(lambda: threads_of("hanging-worker") == [], 5, what="the worker thread to end")


def test_a_builtin_signal_stuck_on_a_trickling_server_ends_within_its_timeout() -> None:
    with StubServer() as stub:
        stub.set("/api/v1/query", Canned(body=vector(1), trickle=0.3))  # ~40 s in all
        sig = PromQLSignal("up", url=stub.url, name="trickled", cadence=5.0, timeout=0.5)
        lim = limiter(sig)
        lim.start()
        wait_for(lambda: bool(stub.seen), 5, what="the first query")
        lim.close()
        assert [n for n in poller_threads() if "trickled" in n] == []
        wait_for(lambda: threads_of("trickled") == [], 3, what="the poll worker to end")


# -- async close() on signals, and astop() of a threaded limiter --------------------------


class AsyncClosing(Counting):
    """A signal whose close() is ``async def``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closed_in: list[int] = []

    async def close(self) -> None:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        self.closed_in.append(threading.get_ident())
        self.closed += 1


@pytest.mark.anyio
async def test_aclose_awaits_an_async_close_in_the_event_loop() -> None:
    sig = AsyncClosing("async-close")
    async with limiter(sig):
        pass
    assert sig.closed == 1
    assert sig.closed_in == [threading.get_ident()]


def test_close_runs_an_async_close_to_completion() -> None:
    sig = AsyncClosing("async-close-sync")
    with limiter(sig):
        wait_for(lambda: sig.polls >= 1, 5)
    assert sig.closed == 1


@pytest.mark.anyio
async def test_close_from_async_code_runs_an_async_close_in_a_helper_thread() -> None:
    sig = AsyncClosing("async-close-in-loop")
    lim = limiter(sig)
    lim.start()
    (runner,) = lim._supervisor._runners
    with anyio.fail_after(5):
        while sig.polls == 0 or runner._busy_since is not None:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    lim.close()  # sync close, with an event loop running in this thread
    assert sig.closed == 1
    assert sig.closed_in != [threading.get_ident()]


@pytest.mark.anyio
async def test_aclose_of_a_threaded_start_joins_threads_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sig = AsyncClosing("threaded-aclose")
    lim = limiter(sig)
    lim.start()
    joined_in: list[int] = []
    supervisor = lim._supervisor
    join = supervisor._join_threads

    def spy() -> None:
        joined_in.append(threading.get_ident())
        join()

    monkeypatch.setattr(supervisor, "_join_threads", spy)
    await lim.aclose()
    assert len(joined_in) == 1
    assert joined_in != [threading.get_ident()]
    assert poller_threads() == []
    assert sig.closed_in == [threading.get_ident()]  # the async close() was awaited here


# -- aclose() from another thread -------------------------------------------------------------


@pytest.mark.anyio
async def test_aclose_from_another_thread_cancels_only_in_the_host_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sig = Counting("cross-thread")
    lim = limiter(sig)
    await lim.astart()
    cancelled_in: list[int] = []
    for runner in lim._supervisor._runners:
        cancel = runner.cancel_task

        def spy(cancel: Callable[[], None] = cancel) -> None:
            cancelled_in.append(threading.get_ident())
            cancel()

        monkeypatch.setattr(runner, "cancel_task", spy)
    errors: list[BaseException] = []

    def close_from_elsewhere() -> None:
        try:
            anyio.run(lim.aclose)
        except LimiterStateError as exc:
            errors.append(exc)

    await anyio.to_thread.run_sync(close_from_elsewhere)
    assert len(errors) == 1
    assert "task that called astart()" in str(errors[0])
    with anyio.fail_after(5):
        while cancelled_in == []:  # noqa: ASYNC110 - waiting for the hand-over
            await anyio.sleep(0.01)
    assert set(cancelled_in) == {threading.get_ident()}
    polls = sig.polls
    await anyio.sleep(0.3)
    assert sig.polls <= polls + 1  # the pollers were stopped
    await lim.aclose()
    assert sig.closed == 1
