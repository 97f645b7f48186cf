"""The reading contract, graded levels and the failure policy (no I/O)."""

from __future__ import annotations

import logging
import math

import pytest

from backpressure_client import ConfigError, ManualClock
from backpressure_client._signals import (
    DURATION_BUCKETS,
    Reading,
    SignalError,
    SignalTracker,
    as_reading,
    describe_exception,
    function_signal,
    graded_level,
)


def tracker(
    clock: ManualClock, *, policy: str = "fail_open", stale_after: float = 30.0
) -> SignalTracker:
    return SignalTracker(
        "sig",
        limiter="lim",
        cadence=10.0,
        timeout=2.0,
        stale_after=stale_after,
        policy=policy,  # type: ignore[arg-type]
        clock=clock,
    )


# -- readings ------------------------------------------------------------------


def test_reading_rejects_a_level_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="level"):
        Reading(firing=False, level=1.5)
    with pytest.raises(ValueError, match="level"):
        Reading(firing=False, level=math.nan)


def test_reading_rejects_a_non_bool_firing() -> None:
    with pytest.raises(TypeError, match="firing"):
        Reading(firing=1)  # type: ignore[arg-type]


def test_a_bool_poll_result_becomes_a_stamped_reading() -> None:
    assert as_reading(True, 12.5) == Reading(firing=True, timestamp=12.5)
    assert as_reading(False, 1.0) == Reading(firing=False, timestamp=1.0)


def test_a_reading_keeps_its_own_timestamp_or_gets_one() -> None:
    assert as_reading(Reading(firing=True, timestamp=3.0), 9.0).timestamp == 3.0
    assert as_reading(Reading(firing=True, level=0.5), 9.0).timestamp == 9.0


def test_garbage_from_poll_is_a_response_error_without_secrets() -> None:
    with pytest.raises(SignalError, match="expected a Reading or a bool") as info:
        as_reading("http://user:pw@host/?token=abc", 0.0)
    assert info.value.reason == "response"
    assert "pw" not in str(info.value)
    assert "abc" not in str(info.value)


def test_signal_error_needs_a_known_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        SignalError("nope", "x")  # type: ignore[arg-type]


# -- graded levels -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-math.inf, 0.0),
        (0.0, 0.0),
        (50.0, 0.0),  # at the warning threshold
        (60.0, 1 - math.exp(-4 * 0.2)),
        (75.0, 1 - math.exp(-4 * 0.5)),
        (99.0, 1 - math.exp(-4 * 0.98)),
        (100.0, 1.0),  # at the emergency threshold
        (250.0, 1.0),
        (math.inf, 1.0),
    ],
)
def test_graded_level_follows_the_curve_between_the_thresholds(
    value: float, expected: float
) -> None:
    assert graded_level(value, 50.0, 100.0) == pytest.approx(expected)


def test_graded_level_curve_constant_sets_the_steepness() -> None:
    gentle = graded_level(60.0, 50.0, 100.0, curve=1.0)
    steep = graded_level(60.0, 50.0, 100.0, curve=10.0)
    assert gentle == pytest.approx(1 - math.exp(-0.2))
    assert steep == pytest.approx(1 - math.exp(-2.0))
    assert gentle < steep


def test_graded_level_reverses_when_emergency_is_below_warning() -> None:
    # Free memory: 1 GiB is fine, 100 MiB is an emergency.
    assert graded_level(2000.0, 1000.0, 100.0) == 0.0
    assert graded_level(100.0, 1000.0, 100.0) == 1.0
    assert 0 < graded_level(500.0, 1000.0, 100.0) < 1


def test_graded_level_refuses_nan_and_equal_thresholds() -> None:
    with pytest.raises(ValueError, match="nan"):
        graded_level(math.nan, 1.0, 2.0)
    with pytest.raises(ValueError, match="different"):
        graded_level(1.0, 2.0, 2.0)


# -- the failure policy ------------------------------------------------------------


def test_a_failure_keeps_the_last_reading_until_it_is_stale_then_fails_open() -> None:
    clock = ManualClock(100.0)
    t = tracker(clock, stale_after=30.0)
    good = Reading(firing=True, value=7.0, timestamp=100.0)
    assert t.success(good, 0.01) is good
    clock.advance(10)
    assert t.failure(SignalError("connection", "refused"), 0.001) is None  # keep: 10 s old
    clock.advance(19.9)
    assert t.failure(SignalError("timeout", "slow"), 2.0) is None  # 29.9 s old
    assert t.stats().firing is True
    assert t.stats().stale is False
    clock.advance(0.1)
    out = t.failure(SignalError("http", "502"), 0.001)  # 30 s old: stale
    assert out == Reading(firing=False, timestamp=130.0)
    stats = t.stats()
    assert (stats.firing, stats.stale, stats.value) == (False, True, 7.0)
    assert stats.errors == 3
    assert stats.consecutive_errors == 3
    assert stats.errors_by_reason["connection"] == 1
    assert stats.errors_by_reason["timeout"] == 1
    assert stats.errors_by_reason["http"] == 1
    assert stats.polls == 4


def test_fail_closed_counts_a_stale_signal_as_firing_at_every_poll() -> None:
    clock = ManualClock()
    t = tracker(clock, policy="fail_closed", stale_after=5.0)
    t.success(Reading(firing=False, timestamp=0.0), None)
    clock.advance(5.0)
    first = t.failure(SignalError("timeout", "x"), None)
    clock.advance(1.0)
    second = t.failure(SignalError("timeout", "x"), None)
    assert first is not None
    assert first.firing
    assert second is not None
    assert second.firing
    assert t.stats().firing is True


def test_a_signal_never_read_gets_the_policy_from_its_first_failure() -> None:
    clock = ManualClock()
    assert tracker(clock).failure(SignalError("connection", "x"), None) == Reading(
        firing=False, timestamp=0.0
    )
    closed = tracker(clock, policy="fail_closed").failure(SignalError("connection", "x"), None)
    assert closed is not None
    assert closed.firing


def test_a_success_after_failures_clears_the_stale_state() -> None:
    clock = ManualClock()
    t = tracker(clock, stale_after=1.0)
    t.failure(SignalError("connection", "x"), None)
    assert t.stats().stale
    t.success(Reading(firing=True, level=0.5, value=3.0, timestamp=0.0), 0.2)
    stats = t.stats()
    assert (stats.stale, stats.firing, stats.level, stats.consecutive_errors) == (
        False,
        True,
        0.5,
        0,
    )
    assert stats.last_success is not None
    assert stats.last_reading == Reading(firing=True, level=0.5, value=3.0, timestamp=0.0)


def test_failures_are_logged_at_most_once_per_cadence(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    t = tracker(clock)  # cadence 10 s
    caplog.set_level(logging.INFO, logger="backpressure_client")
    for _ in range(5):
        t.failure(SignalError("connection", "refused"), None)
        clock.advance(2.0)  # 5 failures within 10 s
    assert len(caplog.records) == 1
    t.failure(SignalError("connection", "refused"), None)  # 10 s after the first message
    assert len(caplog.records) == 2
    assert "4 more failures since" in caplog.records[1].getMessage()
    t.success(Reading(firing=False, timestamp=clock()), None)
    assert "recovered after 6 failed polls" in caplog.records[2].getMessage()
    assert caplog.records[2].levelno == logging.INFO


def test_failure_logs_carry_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    t = tracker(ManualClock())
    caplog.set_level(logging.WARNING, logger="backpressure_client")
    t.failure(
        SignalError("connection", "cannot reach http://admin:hunter2@prom:9090/?token=s3cret"), None
    )
    text = caplog.text
    assert "hunter2" not in text
    assert "s3cret" not in text
    assert "prom:9090" in text


def test_poll_durations_fill_the_histogram_buckets() -> None:
    t = tracker(ManualClock())
    t.success(Reading(firing=False, timestamp=0.0), 0.003)
    t.failure(SignalError("timeout", "x"), 3.0)
    t.failure(SignalError("timeout", "x"), None)  # not measured (a poll that never started)
    stats = t.stats()
    assert stats.duration_count == 2
    assert stats.duration_sum == pytest.approx(3.003)
    assert len(stats.duration_buckets) == len(DURATION_BUCKETS)
    assert stats.duration_buckets[0] == 1  # <= 5 ms
    assert stats.duration_buckets[-1] == 2  # +Inf


# -- function signals and helpers --------------------------------------------------


def test_function_signal_wraps_a_plain_function() -> None:
    sig = function_signal("queue", lambda: True, cadence=5)
    assert sig.name == "queue"
    assert sig.cadence == 5
    assert sig.poll() is True


@pytest.mark.anyio
async def test_function_signal_wraps_an_async_function() -> None:
    async def read() -> Reading:
        return Reading(firing=False, level=0.25)

    sig = function_signal("async", read)
    assert await sig.poll() == Reading(firing=False, level=0.25)  # type: ignore[misc]


def test_function_signal_reports_every_bad_argument_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        function_signal("", 3, cadence=-1, failure_policy="maybe")  # type: ignore[arg-type]
    assert len(info.value.problems) == 4


def test_describe_exception_keeps_the_root_cause_and_drops_secrets() -> None:
    inner = ConnectionRefusedError(111, "Connection refused")
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("pool for http://u:secret@h:1/ failed") from exc
    except RuntimeError as outer:
        text = describe_exception(outer)
    assert text == "RuntimeError: Connection refused"
    assert describe_exception(ValueError("http://u:secret@h/")) == "http://***@h/"
