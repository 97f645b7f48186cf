"""Type-checks the public core API (mypy --strict reads this file; pytest never runs it).

Each ``assert_type`` pins what a caller's type checker sees; a change to a
public signature that would break callers' typing fails ``mypy --strict``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from backpressure_client import (
    AIMDWindow,
    Backpressure,
    BackpressureClientError,
    BackpressureConfig,
    BackpressureError,
    Clock,
    ConfigError,
    ExceptionClassifier,
    FailurePolicy,
    LimiterStateError,
    LimiterStats,
    ManualClock,
    Outcome,
    Permit,
    QueueFullError,
    WaitTimeoutError,
    WindowPolicy,
    classify_exception,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # mypy checks as Python 3.10
    from typing_extensions import assert_type


def configuration() -> BackpressureConfig:
    config = BackpressureConfig(
        enable_backpressure=True,
        backpressure_monitoring_url="http://prometheus:9090/api/v1/query",
        backpressure_queries=("up == 0",),
        congestion_window_min=10,
        congestion_window_max=100,
        monitoring_cadence=60.0,
        failure_policy="fail_closed",
        wait_timeout=0.5,
        max_waiters=16,
        window_policy=WindowPolicy.seed(),
    )
    assert_type(config.backpressure_queries, tuple[str, ...])
    assert_type(config.backpressure_monitoring_url, "str | None")
    assert_type(config.prometheus_base_url, "str | None")
    assert_type(config.failure_policy, FailurePolicy)
    assert_type(config.effective_query_timeout, float)
    assert_type(config.replace(congestion_window_min=1), BackpressureConfig)
    assert_type(BackpressureConfig.from_mapping({"window_policy": "seed"}), BackpressureConfig)
    assert_type(BackpressureConfig.from_env({"BACKPRESSURE_WINDOW_MIN": "3"}), BackpressureConfig)
    assert_type(BackpressureConfig.from_env(), BackpressureConfig)
    return config


def window_arithmetic() -> None:
    policy = WindowPolicy(increase_step=2, decrease_factor=0.7, min_utilisation=0.25)
    assert_type(policy.replace(react_to_drops=False), WindowPolicy)
    assert_type(policy.problems(), list[str])
    window = AIMDWindow(1, 10, policy)
    assert_type(window.on_completion(Outcome.DROPPED, 0, 1, False, 0, 1), int)
    assert_type(window.on_quiet_success(3), int)
    assert_type(window.set_level(0.5), int)
    assert_type(window.size, int)


def sync_use(registry: CollectorRegistry) -> None:
    clock = ManualClock(0.0)
    assert_type(clock.advance(1.0), float)
    bp = Backpressure(configuration(), name="api", clock=clock, signals=(), registry=registry)
    assert_type(Backpressure(), Backpressure)
    assert_type(Backpressure(registry=None).clock, Clock)
    assert_type(bp.window, int)
    assert_type(bp.in_flight, int)
    assert_type(bp.firing, tuple[str, ...])
    assert_type(bp.retry_after, "float | None")
    assert_type(bp.enabled, bool)
    assert_type(bp.closed, bool)
    assert_type(bp.name, str)
    assert_type(bp.config, BackpressureConfig)

    with bp as same:
        assert_type(same, Backpressure)
        permit = bp.try_acquire()
        assert_type(permit, Permit)
        assert_type(permit.seq, int)
        assert_type(permit.in_flight_at_admission, int)
        assert_type(permit.released, bool)
        assert_type(permit.release(), bool)
        assert_type(permit.release("dropped", latency=0.1), bool)
        assert_type(bp.acquire(), Permit)
        assert_type(bp.acquire(timeout=1.5), Permit)
        with bp.slot(2.0, classify=classify_exception) as held:
            assert_type(held, Permit)
        with bp.slot() as held:
            assert_type(held, Permit)

    bp.report_signal("cpu", firing=True, level=0.5)
    bp.forget_signal("cpu")
    bp.set_retry_after(3)
    stats = bp.stats()
    assert_type(stats, LimiterStats)
    assert_type(stats.window, int)
    assert_type(stats.wait_seconds, float)
    assert_type(stats.firing, tuple[str, ...])
    bp.start()
    bp.close()


async def async_use() -> None:
    async with Backpressure(registry=None) as bp:
        assert_type(bp, Backpressure)
        assert_type(await bp.aacquire(), Permit)
        assert_type(await bp.aacquire(timeout=0.5), Permit)
        async with bp.slot(classify=lambda exc: Outcome.IGNORED) as held:
            assert_type(held, Permit)
    await bp.astart()
    await bp.aclose()


def classifiers() -> None:
    assert_type(classify_exception(TimeoutError()), Outcome)
    custom: ExceptionClassifier = lambda exc: Outcome.DROPPED  # noqa: E731
    assert_type(custom, Callable[[BaseException], Outcome])
    assert_type(Outcome("success"), Outcome)
    assert_type(Outcome(Outcome.DROPPED), Outcome)


def errors(exc: BaseException) -> None:
    if isinstance(exc, BackpressureError):
        assert_type(exc.window, int)
        assert_type(exc.in_flight, int)
        assert_type(exc.firing, tuple[str, ...])
        assert_type(exc.retry_after, "float | None")
        assert_type(exc.limiter, str)
    if isinstance(exc, ConfigError):
        assert_type(exc.problems, tuple[str, ...])
    rejections: tuple[type[BackpressureError], ...] = (WaitTimeoutError, QueueFullError)
    base: tuple[type[BackpressureClientError], ...] = (
        BackpressureError,
        ConfigError,
        LimiterStateError,
        *rejections,
    )
    assert_type(base, tuple[type[BackpressureClientError], ...])
    assert_type(BackpressureError(window=1, in_flight=1), BackpressureError)
    assert_type(ConfigError(["x"]), ConfigError)
