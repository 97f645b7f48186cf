"""A hypothesis state machine: the limiter against a plain model of the window.

The model is written from the documented rules, in exact decimal arithmetic
(``Fraction(str(x))``: the number as the configuration reads), not from the
implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    ManualClock,
    Outcome,
    Permit,
    WindowPolicy,
)

SIGNALS = ["cpu", "errors", "queue"]
decimals = st.integers(1, 99).map(lambda n: n / 100)
levels = st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0])


@dataclass
class ModelPermit:
    seq: int
    in_flight: int


@dataclass
class Model:
    """The window and the in-flight requests, by the book."""

    minimum: int
    maximum: int
    policy: WindowPolicy
    size: int = 0
    cap: int = 0
    in_flight: int = 0
    next_seq: int = 0
    reading: int = 0
    last_decrease_seq: int = -1
    last_decrease_reading: int = -1
    # Congestion avoidance: successes counted towards the next +1, and the
    # size from which growth is per round trip (None: never, it is per success).
    credit: int = 0
    avoidance_from: int | None = None
    signals: dict[str, tuple[bool, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.size = self.minimum
        self.cap = self.maximum
        if self.policy.increase_per == "rtt":
            self.avoidance_from = self.maximum if self.policy.slow_start else 0

    @property
    def firing(self) -> tuple[str, ...]:
        return tuple(name for name, (firing, _) in self.signals.items() if firing)

    @property
    def level(self) -> float:
        return max((lv for _, lv in self.signals.values()), default=0.0)

    def admit(self) -> ModelPermit | None:
        if self.in_flight >= self.size:
            return None
        self.in_flight += 1
        self.next_seq += 1
        return ModelPermit(self.next_seq - 1, self.in_flight)

    def release(self, permit: ModelPermit, outcome: Outcome) -> None:
        self.in_flight -= 1
        policy = self.policy
        firing = bool(self.firing)
        if outcome is Outcome.IGNORED:
            return
        if outcome is Outcome.DROPPED and policy.react_to_drops:
            # One decrease per round trip: drops of requests admitted before
            # the last decrease are echoes of it.
            if not (policy.decrease_once_per_rtt and permit.seq < self.last_decrease_seq):
                self.decrease()
            return
        if firing:
            if not (
                policy.decrease_once_per_reading and self.reading == self.last_decrease_reading
            ):
                self.decrease()
            return
        # A quiet success (or a quiet drop the policy does not react to).
        needed = Fraction(str(policy.min_utilisation)) * self.size
        if self.size < self.cap and permit.in_flight >= needed:
            if self.avoidance_from is not None and self.size >= self.avoidance_from:
                # +increase_step per window's worth of successes, one at a time.
                self.credit += policy.increase_step
                if self.credit >= self.size:
                    self.credit -= self.size
                    self.size = min(self.cap, self.size + 1)
            else:
                self.size = min(self.cap, self.size + policy.increase_step)

    def decrease(self) -> None:
        factor = Fraction(str(self.policy.decrease_factor))
        self.size = max(self.minimum, min(self.cap, math.floor(self.size * factor)))
        self.credit = 0
        if self.avoidance_from is not None:
            self.avoidance_from = min(self.avoidance_from, self.size)
        self.last_decrease_seq = self.next_seq
        self.last_decrease_reading = self.reading

    def report(self, name: str, firing: bool, level: float) -> None:
        self.signals[name] = (firing, level)
        if firing:
            self.reading += 1
        self.apply_level()

    def forget(self, name: str) -> None:
        self.signals.pop(name, None)
        self.apply_level()

    def apply_level(self) -> None:
        level = Fraction(str(self.level))
        self.cap = max(self.minimum, math.floor(self.maximum * (1 - level)))
        self.size = min(self.size, self.cap)


class LimiterMachine(RuleBasedStateMachine):
    permits = Bundle("permits")
    released = Bundle("released")

    def __init__(self) -> None:
        super().__init__()
        self.bp: Backpressure
        self.model: Model
        self.clock = ManualClock()
        self.retry_until: float | None = None
        self.outcomes = dict.fromkeys(Outcome, 0)
        self.rejected = 0

    @initialize(
        minimum=st.integers(1, 6),
        # Small windows move a lot in 40 steps; the larger maxima are ones
        # where binary floats misplace graded caps (0.9 of 20, 0.3 of 90).
        maximum=st.integers(6, 30) | st.sampled_from([20, 50, 90, 100]),
        policy=st.one_of(
            st.just(WindowPolicy.seed()),
            st.just(WindowPolicy()),
            st.builds(
                WindowPolicy,
                increase_step=st.integers(1, 4),
                decrease_factor=decimals,
                min_utilisation=st.sampled_from([0.0, 0.25, 0.3, 0.5, 0.7, 1.0]),
                decrease_once_per_reading=st.booleans(),
                decrease_once_per_rtt=st.booleans(),
                react_to_drops=st.booleans(),
                increase_per=st.sampled_from(["success", "rtt"]),
                slow_start=st.booleans(),
            ),
        ),
    )
    def build(self, minimum: int, maximum: int, policy: WindowPolicy) -> None:
        config = BackpressureConfig(
            congestion_window_min=minimum,
            congestion_window_max=maximum,
            window_policy=policy,
        )
        self.bp = Backpressure(config, name="model", clock=self.clock, registry=None)
        self.model = Model(minimum, maximum, policy)

    @rule(target=permits)
    def acquire(self) -> object:
        pair = self.try_acquire()
        return multiple() if pair is None else pair

    @rule(target=permits, n=st.integers(2, 12))
    def burst(self, n: int) -> object:
        return multiple(*(pair for pair in (self.try_acquire() for _ in range(n)) if pair))

    @rule(outcome=st.sampled_from(list(Outcome)))
    def request(self, outcome: Outcome) -> None:
        """A whole request at once: the common case, and how windows grow."""
        pair = self.try_acquire()
        if pair is not None:
            self.release(pair, outcome, None)

    def try_acquire(self) -> tuple[Permit, ModelPermit] | None:
        expected = self.model.admit()
        if expected is None:
            with pytest.raises(BackpressureError) as info:
                self.bp.try_acquire()
            self.rejected += 1
            exc = info.value
            assert (exc.window, exc.in_flight) == (self.model.size, self.model.in_flight)
            assert exc.firing == self.model.firing
            assert exc.retry_after == self.expected_retry_after()
            return None
        permit = self.bp.try_acquire()
        assert (permit.seq, permit.in_flight_at_admission) == (expected.seq, expected.in_flight)
        return (permit, expected)

    @rule(
        target=released,
        pair=consumes(permits),
        outcome=st.sampled_from([*Outcome, "success", "dropped", "ignored"]),
        latency=st.none() | st.floats(0, 10),
    )
    def release(
        self, pair: tuple[Permit, ModelPermit], outcome: Outcome | str, latency: float | None
    ) -> Permit:
        permit, expected = pair
        assert permit.release(outcome, latency=latency) is True
        self.outcomes[Outcome(outcome)] += 1
        self.model.release(expected, Outcome(outcome))
        return permit

    @rule(permit=released, outcome=st.sampled_from(list(Outcome)))
    def release_again(self, permit: Permit, outcome: Outcome) -> None:
        before = self.bp.stats()
        assert permit.release(outcome) is False
        assert self.bp.stats() == before

    @rule(name=st.sampled_from(SIGNALS), firing=st.booleans(), level=levels)
    def report_signal(self, name: str, firing: bool, level: float) -> None:
        self.bp.report_signal(name, firing=firing, level=level)
        self.model.report(name, firing, level)

    @rule(name=st.sampled_from(SIGNALS))
    def forget_signal(self, name: str) -> None:
        self.bp.forget_signal(name)
        self.model.forget(name)

    @rule(seconds=st.integers(0, 30))
    def set_retry_after(self, seconds: int) -> None:
        self.bp.set_retry_after(seconds)
        until = self.clock() + seconds
        if self.retry_until is None or until > self.retry_until:
            self.retry_until = until

    @precondition(lambda self: self.retry_until is not None)
    @rule(seconds=st.integers(1, 20))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)

    def expected_retry_after(self) -> float | None:
        if self.retry_until is None:
            return None
        remaining = self.retry_until - self.clock()
        return remaining if remaining > 0 else None

    @invariant()
    def window_matches_the_model(self) -> None:
        s = self.bp.stats()
        m = self.model
        assert (s.window, s.cap, s.in_flight) == (m.size, m.cap, m.in_flight)
        assert s.minimum <= s.window <= s.cap <= s.maximum
        assert s.in_flight >= 0
        assert (s.firing, s.level) == (m.firing, m.level)

    @invariant()
    def counters_add_up(self) -> None:
        s = self.bp.stats()
        assert (s.success, s.dropped, s.ignored) == (
            self.outcomes[Outcome.SUCCESS],
            self.outcomes[Outcome.DROPPED],
            self.outcomes[Outcome.IGNORED],
        )
        assert s.admitted == s.success + s.dropped + s.ignored + s.in_flight
        assert s.rejected == self.rejected
        assert self.bp.retry_after == self.expected_retry_after()


LimiterMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestLimiterAgainstModel = LimiterMachine.TestCase
