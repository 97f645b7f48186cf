"""Limiter semantics: admission, release, outcomes, signals, hints, stats, lifecycle."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from backpressure_client import (
    Backpressure,
    BackpressureClientError,
    BackpressureConfig,
    BackpressureError,
    ConfigError,
    LimiterStateError,
    ManualClock,
    Outcome,
    Permit,
    QueueFullError,
    WaitTimeoutError,
    WindowPolicy,
    classify_exception,
)


def make(
    minimum: int = 3,
    maximum: int = 10,
    *,
    name: str = "api",
    clock: ManualClock | None = None,
    **config: Any,
) -> Backpressure:
    cfg = BackpressureConfig(congestion_window_min=minimum, congestion_window_max=maximum, **config)
    return Backpressure(cfg, name=name, clock=clock, registry=None)


def fill(bp: Backpressure) -> list[Permit]:
    return [bp.try_acquire() for _ in range(bp.window - bp.in_flight)]


def grow_to(bp: Backpressure, size: int) -> None:
    """Grow the window with fully used successes (any policy grows on those)."""
    while bp.window < size:
        permits = fill(bp)
        permits.pop().release(Outcome.SUCCESS)
        for p in permits:
            p.release(Outcome.IGNORED)
    assert bp.window == size


def assert_balanced(bp: Backpressure) -> None:
    """Every admitted permit is either released (with an outcome) or in flight."""
    s = bp.stats()
    assert s.admitted == s.success + s.dropped + s.ignored + s.in_flight


# -- admission -------------------------------------------------------------


def test_admits_while_in_flight_is_below_the_window() -> None:
    bp = make(3, 10)
    permits = [bp.try_acquire() for _ in range(3)]
    assert [p.in_flight_at_admission for p in permits] == [1, 2, 3]
    assert [p.seq for p in permits] == [0, 1, 2]
    assert bp.in_flight == 3
    assert bp.window == 3


def test_full_window_rejects_at_once_with_the_state_in_the_error() -> None:
    bp = make(3, 10)
    fill(bp)
    with pytest.raises(BackpressureError) as info:
        bp.try_acquire()
    exc = info.value
    assert type(exc) is BackpressureError
    assert (exc.window, exc.in_flight, exc.firing, exc.retry_after, exc.limiter) == (
        3,
        3,
        (),
        None,
        "api",
    )
    assert str(exc) == "backpressure: window full (3/3 in flight, limiter 'api')"
    assert bp.in_flight == 3
    assert bp.stats().rejected == 1


def test_rejection_message_names_firing_signals_and_retry_hint() -> None:
    clock = ManualClock()
    bp = make(1, 1, clock=clock)
    bp.report_signal("cpu", firing=True)
    bp.report_signal("errors", firing=True)
    bp.report_signal("quiet", firing=False)
    bp.set_retry_after(2.5)
    bp.try_acquire()
    with pytest.raises(BackpressureError) as info:
        bp.try_acquire()
    assert info.value.firing == ("cpu", "errors")
    assert str(info.value) == (
        "backpressure: window full (1/1 in flight, limiter 'api'); "
        "firing: cpu, errors; retry after 2.5 s"
    )


def test_long_retry_hint_reads_as_seconds_not_scientific_notation() -> None:
    exc = BackpressureError(window=1, in_flight=1, retry_after=12345.6)
    assert "retry after 12346 s" in str(exc)


def test_acquire_without_timeout_fails_fast_like_try_acquire() -> None:
    bp = make(1, 1)
    bp.try_acquire()
    with pytest.raises(BackpressureError) as info:
        bp.acquire()
    assert type(info.value) is BackpressureError
    with pytest.raises(BackpressureError) as info:
        bp.acquire(0)
    assert type(info.value) is BackpressureError
    assert bp.stats().waiting == 0


@pytest.mark.anyio
async def test_aacquire_fails_fast_when_full() -> None:
    bp = make(1, 1)
    bp.try_acquire()
    with pytest.raises(BackpressureError) as info:
        await bp.aacquire()
    assert type(info.value) is BackpressureError


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("-inf"), ValueError), ("1", TypeError)],
)
def test_bad_timeout_is_rejected_even_with_a_free_slot(timeout: Any, error: type) -> None:
    bp = make()
    with pytest.raises(error, match="timeout="):
        bp.acquire(timeout)
    with pytest.raises(error, match="timeout="), bp.slot(timeout):
        pass
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_bad_timeout_is_rejected_even_with_a_free_slot_async() -> None:
    bp = make()
    with pytest.raises(ValueError, match="timeout="):
        await bp.aacquire(-1)
    assert bp.in_flight == 0


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="BackpressureConfig"):
        Backpressure({"congestion_window_min": 1}, registry=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        Backpressure(name="", registry=None)
    bp = Backpressure(registry=None)
    assert (bp.window, bp.name, bp.config) == (10, "default", BackpressureConfig())


# -- release and outcomes --------------------------------------------------


def test_release_happens_exactly_once() -> None:
    bp = make()
    permit = bp.try_acquire()
    assert not permit.released
    assert permit.release() is True
    assert permit.released
    before = bp.stats()
    assert permit.release() is False
    assert permit.release(Outcome.DROPPED) is False
    assert bp.stats() == before
    assert bp.in_flight == 0


def test_release_frees_a_slot_for_the_next_request() -> None:
    bp = make(1, 1)
    permit = bp.try_acquire()
    permit.release()
    bp.try_acquire()
    assert bp.in_flight == 1


@pytest.mark.parametrize(
    ("outcome", "counter"),
    [
        (Outcome.SUCCESS, "success"),
        ("success", "success"),
        (Outcome.DROPPED, "dropped"),
        ("dropped", "dropped"),
        (Outcome.IGNORED, "ignored"),
        ("ignored", "ignored"),
    ],
)
def test_each_outcome_is_counted(outcome: Outcome | str, counter: str) -> None:
    bp = make()
    bp.try_acquire().release(outcome)
    stats = bp.stats()
    counts = {"success": stats.success, "dropped": stats.dropped, "ignored": stats.ignored}
    assert counts == {k: int(k == counter) for k in counts}


def test_unknown_outcome_raises_and_keeps_the_slot_held() -> None:
    bp = make()
    permit = bp.try_acquire()
    with pytest.raises(ValueError, match="'done'"):
        permit.release("done")
    assert not permit.released
    assert bp.in_flight == 1
    assert permit.release("ignored") is True


def test_outcomes_move_the_window() -> None:
    bp = make(4, 100)  # default policy
    permits = fill(bp)
    permits[0].release(Outcome.SUCCESS)  # admitted with 1 of 4 in flight: too idle to grow
    assert bp.window == 4
    permits[3].release(Outcome.SUCCESS)  # admitted with 4 of 4: grows
    assert bp.window == 5
    permits[1].release(Outcome.IGNORED)
    assert bp.window == 5
    permits[2].release(Outcome.DROPPED)
    assert bp.window == 4  # floor(5 / 2) = 2, raised to min
    stats = bp.stats()
    assert (stats.window_increases, stats.window_decreases) == (1, 1)


def test_seed_policy_limiter_grows_by_one_per_success() -> None:
    bp = make(2, 5, window_policy=WindowPolicy.seed())
    for expected in [3, 4, 5, 5]:
        bp.try_acquire().release()
        assert bp.window == expected


def test_latency_is_summed_in_stats() -> None:
    bp = make()
    bp.try_acquire().release(latency=0.25)
    bp.try_acquire().release(latency=0.5)
    bp.try_acquire().release()
    stats = bp.stats()
    assert (stats.latency_seconds, stats.latency_count) == (0.75, 2)


# -- signals -----------------------------------------------------------------


def test_a_firing_signal_makes_successes_shrink_the_window() -> None:
    bp = make(1, 100, window_policy=WindowPolicy.seed())
    for _ in range(15):
        bp.try_acquire().release()
    assert bp.window == 16
    bp.report_signal("cpu", firing=True)
    assert bp.firing == ("cpu",)
    bp.try_acquire().release()
    assert bp.window == 8
    bp.try_acquire().release()
    assert bp.window == 4
    bp.report_signal("cpu", firing=False)
    assert bp.firing == ()
    bp.try_acquire().release()
    assert bp.window == 5


def test_default_policy_shrinks_once_per_firing_reading() -> None:
    bp = make(1, 100)
    grow_to(bp, 16)
    bp.report_signal("cpu", firing=True)
    for _ in range(3):
        bp.try_acquire().release()
    assert bp.window == 8
    bp.report_signal("cpu", firing=True)  # a fresh reading
    bp.try_acquire().release()
    assert bp.window == 4


def test_forgetting_a_signal_stops_it_firing() -> None:
    bp = make()
    bp.report_signal("a", firing=True)
    bp.report_signal("b", firing=True)
    bp.forget_signal("a")
    assert bp.firing == ("b",)
    bp.forget_signal("missing")  # no error
    bp.forget_signal("b")
    assert bp.firing == ()
    assert bp.stats().firing == ()


def test_graded_level_caps_the_window_and_the_highest_level_wins() -> None:
    bp = make(2, 20, window_policy=WindowPolicy.seed())
    for _ in range(18):
        bp.try_acquire().release()
    assert bp.window == 20
    bp.report_signal("queue", firing=False, level=0.5)
    assert (bp.window, bp.stats().cap, bp.stats().level) == (10, 10, 0.5)
    bp.report_signal("disk", firing=False, level=0.25)
    assert bp.stats().cap == 10
    bp.report_signal("queue", firing=False, level=0.0)
    assert (bp.window, bp.stats().cap, bp.stats().level) == (10, 15, 0.25)
    bp.forget_signal("disk")
    assert bp.stats().cap == 20
    assert bp.stats().window_decreases == 1


def test_lifting_the_cap_lets_the_window_grow_again() -> None:
    bp = make(2, 10)
    bp.report_signal("q", firing=False, level=0.8)  # cap 2
    permits = fill(bp)
    permits[-1].release()
    assert bp.window == 2
    bp.report_signal("q", firing=False, level=0.0)
    permits = fill(bp)
    permits[-1].release()
    assert bp.window == 3


@pytest.mark.parametrize("level", [-0.1, 1.5, float("nan")])
def test_report_signal_rejects_a_level_outside_0_1(level: float) -> None:
    bp = make()
    with pytest.raises(ValueError, match="level="):
        bp.report_signal("q", firing=True, level=level)
    assert bp.firing == ()


@pytest.mark.parametrize("name", ["", None, 3])
def test_report_signal_rejects_a_name_that_is_not_a_string(name: Any) -> None:
    bp = make()
    with pytest.raises(ValueError, match="name="):
        bp.report_signal(name, firing=True)
    assert bp.firing == ()


# -- retry-after ---------------------------------------------------------------


def test_retry_after_hint_counts_down_until_it_passes() -> None:
    clock = ManualClock(100.0)
    bp = make(1, 1, clock=clock)
    bp.try_acquire()
    assert bp.retry_after is None
    bp.set_retry_after(5)
    assert bp.retry_after == 5
    with pytest.raises(BackpressureError) as info:
        bp.try_acquire()
    assert info.value.retry_after == 5
    clock.advance(2)
    assert bp.retry_after == 3
    with pytest.raises(BackpressureError) as info:
        bp.try_acquire()
    assert info.value.retry_after == 3
    clock.advance(3)
    assert bp.retry_after is None
    with pytest.raises(BackpressureError) as info:
        bp.try_acquire()
    assert info.value.retry_after is None


def test_the_latest_retry_deadline_wins() -> None:
    clock = ManualClock()
    bp = make(clock=clock)
    bp.set_retry_after(10)
    bp.set_retry_after(2)
    assert bp.retry_after == 10
    clock.advance(5)
    bp.set_retry_after(8)
    assert bp.retry_after == 8


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_set_retry_after_rejects_bad_seconds(seconds: float) -> None:
    bp = make()
    with pytest.raises(ValueError, match="seconds="):
        bp.set_retry_after(seconds)
    assert bp.retry_after is None


# -- disabled --------------------------------------------------------------------


def test_disabled_limiter_admits_everything_and_says_so() -> None:
    bp = make(1, 1, enable_backpressure=False)
    permits = [bp.try_acquire() for _ in range(50)]
    assert bp.in_flight == 50
    assert not bp.enabled
    assert "disabled" in repr(bp)
    assert "admits everything" in repr(bp)
    for p in permits[:10]:
        p.release(Outcome.DROPPED)
    bp.report_signal("cpu", firing=True)
    for p in permits[10:]:
        p.release()
    assert bp.window == 1
    stats = bp.stats()
    assert not stats.enabled
    assert (stats.in_flight, stats.admitted, stats.dropped, stats.success) == (0, 50, 10, 40)
    assert (stats.window_increases, stats.window_decreases) == (0, 0)


@pytest.mark.anyio
async def test_disabled_limiter_admits_everything_async() -> None:
    bp = make(1, 1, enable_backpressure=False)
    permits = [await bp.aacquire() for _ in range(5)]
    assert bp.in_flight == 5
    for p in permits:
        p.release()


# -- stats -------------------------------------------------------------------------


def test_stats_is_a_consistent_snapshot() -> None:
    clock = ManualClock()
    bp = make(2, 10, clock=clock)
    held = fill(bp)
    with pytest.raises(BackpressureError):
        bp.try_acquire()
    held[0].release(Outcome.DROPPED, latency=1.0)
    held[1].release(Outcome.SUCCESS)
    bp.try_acquire().release(Outcome.IGNORED)
    bp.try_acquire()
    bp.report_signal("cpu", firing=True, level=0.5)
    s = bp.stats()
    assert s.name == "api"
    assert s.enabled
    # The drop (at min: no smaller) ended the slow start, so one success
    # is not a window's worth: no growth.
    assert (s.window, s.in_flight, s.waiting, s.minimum, s.maximum, s.cap) == (2, 1, 0, 2, 10, 5)
    assert (s.admitted, s.rejected, s.success, s.dropped, s.ignored) == (4, 1, 1, 1, 1)
    assert (s.window_increases, s.window_decreases) == (0, 0)
    assert (s.latency_seconds, s.latency_count, s.wait_seconds) == (1.0, 1, 0.0)
    assert (s.firing, s.level) == (("cpu",), 0.5)
    assert (s.window, s.in_flight) == (bp.window, bp.in_flight)
    assert_balanced(bp)


# -- the free-slot async path ---------------------------------------------------------


async def reaches_a_checkpoint(step: Callable[[], Awaitable[object]]) -> bool:
    """Whether awaiting *step* checkpoints: inside a cancelled scope, any checkpoint raises."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await step()
        return False
    assert scope.cancelled_caught
    return True


@pytest.mark.anyio
async def test_the_checkpoint_detector_detects_checkpoints() -> None:
    assert await reaches_a_checkpoint(anyio.lowlevel.checkpoint)
    assert await reaches_a_checkpoint(lambda: anyio.sleep(1))  # raises at once


@pytest.mark.anyio
async def test_aacquire_with_a_free_slot_does_not_yield_to_the_event_loop() -> None:
    bp = make()
    permits: list[Permit] = []

    async def acquire() -> None:
        permits.append(await bp.aacquire())

    assert not await reaches_a_checkpoint(acquire)
    assert not await reaches_a_checkpoint(lambda: bp.aacquire(timeout=5))
    assert len(permits) == 1
    assert bp.in_flight == 2


@pytest.mark.anyio
async def test_async_slot_with_a_free_slot_does_not_yield_to_the_event_loop() -> None:
    bp = make()

    async def use_slot() -> None:
        async with bp.slot():
            pass

    assert not await reaches_a_checkpoint(use_slot)
    assert bp.in_flight == 0
    assert bp.stats().success == 1


@pytest.mark.anyio
async def test_aacquire_with_a_free_slot_lets_no_other_task_run() -> None:
    bp = make()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        for _ in range(5):
            (await bp.aacquire()).release()
        assert ran == []
    assert ran == ["other"]


# -- the slot context manager -----------------------------------------------------------


def test_slot_releases_as_success_on_normal_exit() -> None:
    bp = make()
    with bp.slot() as permit:
        assert bp.in_flight == 1
        assert isinstance(permit, Permit)
    assert permit.released
    assert bp.stats().success == 1


@pytest.mark.parametrize(
    ("exc", "counter"),
    [
        (TimeoutError("slow"), "dropped"),
        (ValueError("bug"), "ignored"),
        (KeyboardInterrupt(), "ignored"),
    ],
)
def test_slot_classifies_the_exception_that_ends_it(exc: BaseException, counter: str) -> None:
    bp = make()
    with pytest.raises(type(exc)), bp.slot():
        raise exc
    assert bp.in_flight == 0
    assert getattr(bp.stats(), counter) == 1


def test_slot_uses_a_custom_classifier() -> None:
    bp = make()
    seen: list[BaseException] = []

    def classify(exc: BaseException) -> Outcome:
        seen.append(exc)
        return Outcome.DROPPED

    with pytest.raises(ValueError, match="overloaded"), bp.slot(classify=classify):
        raise ValueError("overloaded")
    assert [str(e) for e in seen] == ["overloaded"]
    assert bp.stats().dropped == 1


def test_a_classifier_that_raises_costs_no_slot() -> None:
    bp = make()

    def broken(exc: BaseException) -> Outcome:
        raise RuntimeError("classifier bug")

    with pytest.raises(RuntimeError, match="classifier bug"), bp.slot(classify=broken):
        raise ValueError("request failed")
    assert bp.in_flight == 0
    assert bp.stats().ignored == 1


def test_a_classifier_that_returns_no_outcome_costs_no_slot() -> None:
    bp = make()
    with (
        pytest.raises(ValueError, match="None is not a valid Outcome"),
        bp.slot(classify=lambda exc: None),  # type: ignore[arg-type,return-value]
    ):
        raise OSError("request failed")
    assert bp.in_flight == 0
    assert bp.stats().ignored == 1


def test_slot_released_inside_the_block_is_not_released_again() -> None:
    bp = make()
    with bp.slot() as permit:
        permit.release(Outcome.DROPPED)
    stats = bp.stats()
    assert (stats.dropped, stats.success, stats.in_flight) == (1, 0, 0)


def test_slot_that_is_not_admitted_raises_and_holds_nothing() -> None:
    bp = make(1, 1)
    bp.try_acquire()
    entered = False
    with pytest.raises(BackpressureError), bp.slot():
        entered = True
    assert not entered
    assert bp.in_flight == 1


@pytest.mark.anyio
async def test_async_slot_releases_on_every_path() -> None:
    bp = make()
    async with bp.slot():
        assert bp.in_flight == 1
    with pytest.raises(TimeoutError):
        async with bp.slot():
            raise TimeoutError
    with anyio.move_on_after(0):
        async with bp.slot():
            await anyio.sleep(1)
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.dropped, stats.ignored) == (0, 1, 1, 1)


def test_classify_exception_counts_only_timeouts_as_overload() -> None:
    assert classify_exception(TimeoutError()) is Outcome.DROPPED
    assert classify_exception(asyncio.TimeoutError()) is Outcome.DROPPED
    assert classify_exception(ConnectionError()) is Outcome.IGNORED
    assert classify_exception(asyncio.CancelledError()) is Outcome.IGNORED


# -- lifecycle and reprs ---------------------------------------------------------------------


def test_closed_limiter_turns_requests_away_but_accepts_releases() -> None:
    bp = make()
    permit = bp.try_acquire()
    assert not bp.closed
    bp.close()
    assert bp.closed
    with pytest.raises(LimiterStateError, match="closed"):
        bp.try_acquire()
    with pytest.raises(LimiterStateError, match="closed"):
        bp.acquire(timeout=5)
    with pytest.raises(LimiterStateError, match="closed"):
        bp.start()
    assert permit.release() is True
    assert bp.in_flight == 0
    assert bp.stats().rejected == 0, "a closed limiter does not count rejections"
    bp.close()  # idempotent
    assert "closed" in repr(bp)


@pytest.mark.anyio
async def test_closed_limiter_turns_async_requests_away() -> None:
    bp = make()
    await bp.aclose()
    with pytest.raises(LimiterStateError):
        await bp.aacquire()
    with pytest.raises(LimiterStateError):
        await bp.astart()


def test_limiter_as_context_manager_closes_on_exit() -> None:
    with make() as bp:
        bp.try_acquire().release()
    with pytest.raises(LimiterStateError):
        bp.try_acquire()


@pytest.mark.anyio
async def test_limiter_as_async_context_manager_closes_on_exit() -> None:
    async with make() as bp:
        (await bp.aacquire()).release()
    with pytest.raises(LimiterStateError):
        await bp.aacquire()


def test_limiter_repr_shows_the_state() -> None:
    bp = make(3, 10)
    bp.try_acquire()
    assert repr(bp) == "<Backpressure 'api' window=3 in_flight=1 range=[3, 10]>"
    bp.report_signal("cpu", firing=True)
    assert repr(bp) == "<Backpressure 'api' window=3 in_flight=1 range=[3, 10] firing=['cpu']>"


def test_permit_repr_shows_whether_it_is_held() -> None:
    bp = make()
    permit = bp.try_acquire()
    assert repr(permit) == "<Permit #0 held, limiter 'api'>"
    permit.release()
    assert repr(permit) == "<Permit #0 released>"


def test_read_only_views() -> None:
    clock = ManualClock()
    bp = make(clock=clock)
    assert bp.clock is clock
    for attr in ("window", "in_flight", "firing", "enabled", "retry_after", "clock", "closed"):
        with pytest.raises(AttributeError):
            setattr(bp, attr, 1)


# -- errors ---------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(BackpressureError, BackpressureClientError)
    assert issubclass(WaitTimeoutError, BackpressureError)
    assert issubclass(QueueFullError, BackpressureError)
    assert issubclass(LimiterStateError, BackpressureClientError)
    assert issubclass(LimiterStateError, RuntimeError)
    assert issubclass(ConfigError, BackpressureClientError)
    assert issubclass(ConfigError, ValueError)
    assert not issubclass(LimiterStateError, BackpressureError)


@pytest.mark.parametrize("kind", [BackpressureError, WaitTimeoutError, QueueFullError])
def test_rejections_survive_pickling(kind: type[BackpressureError]) -> None:
    exc = kind(window=4, in_flight=5, firing=["cpu"], retry_after=1.5, limiter="api")
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is kind
    assert (copy.window, copy.in_flight, copy.firing, copy.retry_after, copy.limiter) == (
        4,
        5,
        ("cpu",),
        1.5,
        "api",
    )
    assert str(copy) == str(exc)


def test_config_error_survives_pickling() -> None:
    exc = ConfigError(["a=1: bad", "b=2: worse"])
    copy = pickle.loads(pickle.dumps(exc))
    assert copy.problems == ("a=1: bad", "b=2: worse")
    assert str(copy) == str(exc)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(WaitTimeoutError, "no slot within the wait timeout"), (QueueFullError, "wait queue full")],
)
def test_waiting_errors_say_why(kind: type[BackpressureError], reason: str) -> None:
    assert str(kind(window=2, in_flight=2)) == (
        f"backpressure: {reason} (2/2 in flight, limiter 'default')"
    )


# -- the clock ----------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(5.0)
    assert clock() == 5.0
    assert clock.advance(1.5) == 6.5
    clock.set(10)
    assert clock() == 10.0
    assert repr(clock) == "ManualClock(10.0)"


@pytest.mark.parametrize(
    "move",
    [
        lambda c: c.advance(-1),
        lambda c: c.set(0),
        lambda c: c.advance(float("nan")),
        lambda c: c.set(float("nan")),
        lambda c: c.advance(float("inf")),
    ],
)
def test_manual_clock_never_goes_back_or_off_the_line(move: Callable[[ManualClock], Any]) -> None:
    clock = ManualClock(1.0)
    with pytest.raises(ValueError, match=r"clock|finite"):
        move(clock)
    assert clock() == 1.0


def test_manual_clock_start_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        ManualClock(float("nan"))


def test_one_slot_object_cannot_be_held_twice_at_once() -> None:
    bp = make(2, 2)
    guard = bp.slot()
    with guard, pytest.raises(RuntimeError, match="already held"), guard:
        pass
    assert bp.in_flight == 0
    # Used again after its block, it works.
    with guard:
        assert bp.in_flight == 1
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_one_slot_object_shared_by_tasks_is_refused_not_leaked() -> None:
    bp = make(3, 3)
    guard = bp.slot()
    errors: list[BaseException] = []

    async def use(entered: anyio.Event, leave: anyio.Event) -> None:
        try:
            async with guard:
                entered.set()
                await leave.wait()
        except RuntimeError as exc:
            errors.append(exc)
            entered.set()

    first, second, leave = anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(use, first, leave)
        await first.wait()
        tg.start_soon(use, second, leave)
        await second.wait()
        leave.set()
    assert len(errors) == 1
    assert bp.in_flight == 0
