"""The window arithmetic, as tables: the seed policy exactly, then each option."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backpressure_client import AIMDWindow, Outcome, WindowPolicy

SEED = WindowPolicy.seed()
DEFAULT = WindowPolicy()


class Ev(NamedTuple):
    """One completed request, as the limiter reports it to the window."""

    outcome: Outcome
    firing: bool = False
    reading: int = 0
    #: requests in flight at admission; None: the whole window (full use).
    in_flight: int | None = None
    seq: int = 0
    next_seq: int = 0


OK = Ev(Outcome.SUCCESS)
DROP = Ev(Outcome.DROPPED)
IGNORE = Ev(Outcome.IGNORED)


def ok(in_flight: int | None = None) -> Ev:
    return Ev(Outcome.SUCCESS, in_flight=in_flight)


def ok_firing(reading: int = 1) -> Ev:
    return Ev(Outcome.SUCCESS, firing=True, reading=reading)


def drop(seq: int = 0, next_seq: int = 0, *, firing: bool = False, reading: int = 0) -> Ev:
    return Ev(Outcome.DROPPED, firing=firing, reading=reading, seq=seq, next_seq=next_seq)


def grown(policy: WindowPolicy, minimum: int, maximum: int, size: int) -> AIMDWindow:
    """A window brought from ``minimum`` to *size* by fully used quiet successes."""
    window = AIMDWindow(minimum, maximum, policy)
    while window.size < size:
        window.on_quiet_success(window.size)
    assert window.size == size, "the table asks for a size the policy cannot reach"
    return window


def drive(window: AIMDWindow, events: list[Ev]) -> list[int]:
    sizes = []
    for ev in events:
        in_flight = window.size if ev.in_flight is None else ev.in_flight
        sizes.append(
            window.on_completion(ev.outcome, ev.seq, in_flight, ev.firing, ev.reading, ev.next_seq)
        )
    return sizes


class Row(NamedTuple):
    policy: WindowPolicy
    minimum: int
    maximum: int
    start: int
    events: list[Ev]
    expected: list[int]


SEED_TABLE = {
    "a quiet success adds 1": Row(SEED, 1, 10, 1, [OK, OK, OK], [2, 3, 4]),
    "growth ignores how much of the window was used": Row(SEED, 1, 10, 5, [ok(1), ok(1)], [6, 7]),
    "growth stops at max": Row(SEED, 1, 5, 4, [OK, OK, OK], [5, 5, 5]),
    "every completion halves while firing, same reading": Row(
        SEED, 1, 100, 40, [ok_firing(1)] * 3, [20, 10, 5]
    ),
    "halving floors an odd size": Row(SEED, 1, 100, 11, [ok_firing()], [5]),
    "halving never goes below min": Row(SEED, 4, 100, 9, [ok_firing(), ok_firing()], [4, 4]),
    "a drop while quiet counts as a completed request": Row(SEED, 1, 10, 3, [DROP], [4]),
    "a drop while firing halves": Row(SEED, 1, 100, 8, [drop(firing=True, reading=1)], [4]),
    "every drop halves while firing, whenever admitted": Row(
        SEED,
        1,
        100,
        40,
        [drop(0, 5, firing=True, reading=1), drop(1, 5, firing=True, reading=1)],
        [20, 10],
    ),
    "growth resumes once the signal stops": Row(SEED, 1, 100, 8, [ok_firing(), OK, OK], [4, 5, 6]),
    "ignored changes nothing, firing or not": Row(
        SEED, 1, 10, 3, [IGNORE, Ev(Outcome.IGNORED, firing=True, reading=1)], [3, 3]
    ),
}


@pytest.mark.parametrize("row", SEED_TABLE.values(), ids=SEED_TABLE.keys())
def test_seed_policy(row: Row) -> None:
    window = grown(row.policy, row.minimum, row.maximum, row.start)
    assert drive(window, row.events) == row.expected


def test_seed_policy_is_the_original_design_with_every_refinement_off() -> None:
    expected = WindowPolicy(
        increase_step=1,
        decrease_factor=0.5,
        min_utilisation=0.0,
        decrease_once_per_reading=False,
        decrease_once_per_rtt=False,
        react_to_drops=False,
        increase_per="success",
        slow_start=False,
    )
    assert expected == SEED


@pytest.mark.parametrize("policy", [SEED, DEFAULT], ids=["seed", "default"])
def test_window_starts_at_min(policy: WindowPolicy) -> None:
    window = AIMDWindow(7, 50, policy)
    assert (window.size, window.minimum, window.maximum, window.cap) == (7, 7, 50, 50)


OPTION_TABLE = {
    # increase_per="rtt" with slow_start (the defaults).
    "default: slow start grows per success until the first decrease": Row(
        DEFAULT, 1, 100, 10, [OK, OK, OK], [11, 12, 13]
    ),
    "default: after a decrease, +1 per window's worth of successes": Row(
        DEFAULT, 1, 100, 40, [DROP] + [OK] * 20, [20] + [20] * 19 + [21]
    ),
    "default: a decrease at min still ends the slow start": Row(
        DEFAULT, 4, 100, 4, [DROP] + [OK] * 4, [4, 4, 4, 4, 5]
    ),
    "a decrease forfeits the successes counted towards the next +1": Row(
        DEFAULT,
        1,
        100,
        40,
        [DROP] + [OK] * 19 + [DROP] + [OK] * 10,
        [20] + [20] * 19 + [10] + [10] * 9 + [11],
    ),
    "increase_step=2 per round trip: +1 per half window of successes": Row(
        DEFAULT.replace(increase_step=2), 2, 100, 40, [DROP] + [OK] * 10, [20] + [20] * 9 + [21]
    ),
    "slow_start off: per round trip from the start": Row(
        DEFAULT.replace(slow_start=False), 4, 100, 4, [OK] * 8, [4, 4, 4, 5, 5, 5, 5, 5]
    ),
    "increase_per=success: +step per success even after a decrease": Row(
        DEFAULT.replace(increase_per="success"), 1, 100, 40, [DROP, OK, OK], [20, 21, 22]
    ),
    # min_utilisation (default 0.5): grow only from half the window in use.
    "default: no growth below half use": Row(DEFAULT, 1, 100, 10, [ok(4)], [10]),
    "default: growth at exactly half use": Row(DEFAULT, 1, 100, 10, [ok(5)], [11]),
    "default: half of an odd window rounds up": Row(DEFAULT, 1, 100, 11, [ok(5), ok(6)], [11, 12]),
    "min_utilisation=0 grows on any success": Row(
        DEFAULT.replace(min_utilisation=0.0), 1, 100, 10, [ok(1)], [11]
    ),
    "min_utilisation=1 grows only when full": Row(
        DEFAULT.replace(min_utilisation=1.0), 1, 100, 10, [ok(9), ok(10)], [10, 11]
    ),
    "min_utilisation=0.28 of 25 is 7 requests, not 7.000000000000001": Row(
        DEFAULT.replace(min_utilisation=0.28), 1, 100, 25, [ok(6), ok(7)], [25, 26]
    ),
    # decrease_once_per_reading (default on).
    "default: one decrease per firing reading": Row(
        DEFAULT,
        1,
        100,
        40,
        [ok_firing(1), ok_firing(1), ok_firing(2), ok_firing(2), ok_firing(3)],
        [20, 20, 10, 10, 5],
    ),
    "decrease_once_per_reading off: a decrease per completion": Row(
        DEFAULT.replace(decrease_once_per_reading=False),
        1,
        100,
        40,
        [ok_firing(1), ok_firing(1), ok_firing(1)],
        [20, 10, 5],
    ),
    "a success while firing never grows, even fully used": Row(
        DEFAULT, 1, 100, 40, [ok_firing(1), ok_firing(1)], [20, 20]
    ),
    # decrease_once_per_rtt (default on).
    "default: drops admitted before the last decrease are echoes": Row(
        DEFAULT,
        1,
        100,
        40,
        [drop(seq=5, next_seq=10), drop(seq=9, next_seq=12), drop(seq=10, next_seq=12)],
        [20, 20, 10],
    ),
    "decrease_once_per_rtt off: every drop shrinks": Row(
        DEFAULT.replace(decrease_once_per_rtt=False),
        1,
        100,
        40,
        [drop(seq=5, next_seq=10), drop(seq=9, next_seq=12)],
        [20, 10],
    ),
    "a firing decrease also marks earlier drops as echoes": Row(
        DEFAULT, 1, 100, 40, [Ev(Outcome.SUCCESS, True, 1, None, 3, 10), drop(seq=7)], [20, 20]
    ),
    "a drop's decrease uses up the firing reading": Row(
        DEFAULT, 1, 100, 40, [drop(0, 10, firing=True, reading=1), ok_firing(1)], [20, 20]
    ),
    # react_to_drops (default on).
    "default: a drop shrinks with no signal firing": Row(DEFAULT, 1, 100, 40, [DROP], [20]),
    "react_to_drops off: a quiet drop counts as a success": Row(
        DEFAULT.replace(react_to_drops=False), 1, 100, 10, [DROP, drop()], [11, 12]
    ),
    "react_to_drops off: a quiet drop still needs half use to grow": Row(
        DEFAULT.replace(react_to_drops=False),
        1,
        100,
        10,
        [Ev(Outcome.DROPPED, in_flight=2)],
        [10],
    ),
    "react_to_drops off: a firing drop decreases like any completion": Row(
        DEFAULT.replace(react_to_drops=False),
        1,
        100,
        40,
        [drop(firing=True, reading=1), drop(firing=True, reading=1)],
        [20, 20],
    ),
    # increase_step.
    "increase_step=3 adds 3": Row(DEFAULT.replace(increase_step=3), 1, 100, 4, [OK, OK], [7, 10]),
    "increase_step stops at max": Row(DEFAULT.replace(increase_step=3), 1, 11, 10, [OK], [11]),
    # decrease_factor.
    "decrease_factor=0.75 keeps three quarters, floored": Row(
        DEFAULT.replace(decrease_factor=0.75), 1, 100, 40, [DROP, drop(1, 2)], [30, 22]
    ),
    "decrease_factor=0.29 of 100 is 29, not 28": Row(
        DEFAULT.replace(decrease_factor=0.29, min_utilisation=0.0), 1, 100, 100, [DROP], [29]
    ),
    "decrease_factor=0.1 stops at min": Row(
        DEFAULT.replace(decrease_factor=0.1), 3, 100, 20, [DROP], [3]
    ),
    "ignored changes nothing under the default policy": Row(
        DEFAULT, 1, 100, 10, [IGNORE, Ev(Outcome.IGNORED, firing=True, reading=1)], [10, 10]
    ),
}


@pytest.mark.parametrize("row", OPTION_TABLE.values(), ids=OPTION_TABLE.keys())
def test_window_policy_option(row: Row) -> None:
    window = grown(row.policy, row.minimum, row.maximum, row.start)
    assert drive(window, row.events) == row.expected


def test_default_policy_values() -> None:
    expected = WindowPolicy(
        increase_step=1,
        decrease_factor=0.5,
        min_utilisation=0.5,
        decrease_once_per_reading=True,
        decrease_once_per_rtt=True,
        react_to_drops=True,
    )
    assert expected == DEFAULT


def test_quiet_success_shortcut_equals_on_completion() -> None:
    for in_flight in range(12):
        a = grown(DEFAULT, 1, 100, 10)
        b = grown(DEFAULT, 1, 100, 10)
        assert a.on_quiet_success(in_flight) == b.on_completion(
            Outcome.SUCCESS, 0, in_flight, False, 0, 0
        )


def test_grow_floor_is_the_smallest_in_flight_that_grows() -> None:
    window = grown(DEFAULT.replace(min_utilisation=0.28), 1, 100, 25)
    assert window.grow_floor == 7
    full = grown(DEFAULT, 1, 10, 10)
    assert full.on_quiet_success(10) == 10
    assert full.grow_floor > 10**9, "a window at its cap has nothing to grow into"


def test_on_completion_accepts_outcome_strings() -> None:
    window = grown(DEFAULT, 1, 100, 10)
    assert window.on_completion("ignored", 0, 10, False, 0, 0) == 10  # type: ignore[arg-type]
    assert window.on_completion("dropped", 0, 10, False, 0, 1) == 5  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bogus"):
        window.on_completion("bogus", 0, 10, False, 0, 0)  # type: ignore[arg-type]


class LevelRow(NamedTuple):
    minimum: int
    maximum: int
    start: int
    level: float
    cap: int
    size: int


LEVEL_TABLE = {
    "level 0 leaves max": LevelRow(1, 100, 10, 0.0, 100, 10),
    "level 0.5 caps at half of max": LevelRow(1, 100, 80, 0.5, 50, 50),
    "a cap above the size leaves the size": LevelRow(1, 100, 20, 0.5, 50, 20),
    "cap is floor(max * (1 - level))": LevelRow(1, 10, 10, 0.25, 7, 7),
    "0.3 of 90 leaves 63, not 62": LevelRow(1, 90, 90, 0.3, 63, 63),
    "0.07 of 500 leaves 465, not 464": LevelRow(1, 500, 500, 0.07, 465, 465),
    "level 1 caps at min": LevelRow(3, 100, 50, 1.0, 3, 3),
    "the cap never goes below min": LevelRow(4, 10, 10, 0.9, 4, 4),
    "a level above 1 counts as 1": LevelRow(2, 10, 10, 7.0, 2, 2),
    "a level below 0 counts as 0": LevelRow(2, 10, 5, -1.0, 10, 5),
}


@pytest.mark.parametrize("row", LEVEL_TABLE.values(), ids=LEVEL_TABLE.keys())
def test_set_level_caps_the_window(row: LevelRow) -> None:
    window = grown(SEED, row.minimum, row.maximum, row.start)
    assert window.set_level(row.level) == row.size
    assert (window.cap, window.size) == (row.cap, row.size)


def test_growth_stops_at_the_cap_and_resumes_when_lifted() -> None:
    window = grown(SEED, 1, 100, 10)
    window.set_level(0.9)
    assert window.cap == 10
    assert drive(window, [OK, OK]) == [10, 10]
    assert window.set_level(0.0) == 10, "lifting the cap does not raise the window"
    assert drive(window, [OK]) == [11]


def test_a_decrease_respects_the_cap() -> None:
    window = grown(SEED.replace(decrease_factor=0.9), 1, 100, 50)
    window.set_level(0.8)  # cap 20
    assert window.size == 20
    assert drive(window, [ok_firing()]) == [18]


@pytest.mark.parametrize(("minimum", "maximum"), [(0, 10), (5, 4), (-1, -1)])
def test_window_bounds_are_checked(minimum: int, maximum: int) -> None:
    with pytest.raises(ValueError, match=r"1 <= minimum <= maximum"):
        AIMDWindow(minimum, maximum)


def test_window_repr_shows_size_bounds_and_cap() -> None:
    window = AIMDWindow(2, 20)
    assert repr(window) == "AIMDWindow(size=2, [2, 20])"
    window.set_level(0.5)
    assert repr(window) == "AIMDWindow(size=2, [2, 20], cap=10)"


POLICY_PROBLEMS = {
    "increase_step": (0, "must be an integer >= 1"),
    "decrease_factor": (1.0, "0 < factor < 1"),
    "min_utilisation": (1.5, "must be a number in [0, 1]"),
    "decrease_once_per_reading": ("yes", "must be true or false"),
    "decrease_once_per_rtt": (1, "must be true or false"),
    "react_to_drops": (None, "must be true or false"),
}


@pytest.mark.parametrize(("field", "case"), POLICY_PROBLEMS.items(), ids=POLICY_PROBLEMS.keys())
def test_policy_problem_names_the_field_and_value(field: str, case: tuple[object, str]) -> None:
    value, need = case
    policy = dataclasses.replace(DEFAULT, **{field: value})
    (problem,) = policy.problems()
    assert problem.startswith(f"window_policy.{field}={value!r}: ")
    assert need in problem


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("increase_step", True),
        ("increase_step", 1.5),
        ("decrease_factor", 0),
        ("decrease_factor", float("nan")),
        ("decrease_factor", "0.5"),
        ("min_utilisation", -0.1),
        ("min_utilisation", float("inf")),
    ],
)
def test_policy_rejects_bad_numbers(field: str, value: object) -> None:
    assert len(dataclasses.replace(DEFAULT, **{field: value}).problems()) == 1


def test_policy_is_valid_and_immutable() -> None:
    assert DEFAULT.problems() == []
    assert SEED.problems() == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.increase_step = 2  # type: ignore[misc]
    assert DEFAULT.replace(increase_step=2).increase_step == 2
    assert DEFAULT.increase_step == 1


decimal_factor = st.integers(1, 99).map(lambda n: n / 100)
events = st.lists(
    st.tuples(
        st.sampled_from(list(Outcome)),
        st.booleans(),
        st.integers(0, 3),
        st.integers(0, 200),
        st.floats(0, 1) | st.none(),
    ),
    max_size=60,
)


@given(
    policy=st.builds(
        WindowPolicy,
        increase_step=st.integers(1, 5),
        decrease_factor=decimal_factor,
        min_utilisation=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        decrease_once_per_reading=st.booleans(),
        decrease_once_per_rtt=st.booleans(),
        react_to_drops=st.booleans(),
    ),
    minimum=st.integers(1, 20),
    extra=st.integers(0, 80),
    events=events,
)
def test_window_stays_within_min_and_cap(
    policy: WindowPolicy,
    minimum: int,
    extra: int,
    events: list[tuple[Outcome, bool, int, int, float | None]],
) -> None:
    window = AIMDWindow(minimum, minimum + extra, policy)
    for seq, (outcome, firing, reading, in_flight, level) in enumerate(events):
        if level is not None:
            window.set_level(level)
        window.on_completion(outcome, seq, in_flight, firing, reading, seq + 1)
        assert window.minimum <= window.size <= window.cap <= window.maximum
