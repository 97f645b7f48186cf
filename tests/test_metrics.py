"""The limiter's own metrics, read from a prometheus_client registry."""

from __future__ import annotations

import gc
import logging
import math
import time

import pytest
from _stub_servers import wait_for
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest

from backpressure_client import Backpressure, BackpressureConfig, BackpressureError
from backpressure_client._signals import Reading, SignalError, function_signal

CONFIG = BackpressureConfig(congestion_window_min=2, congestion_window_max=10)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_limiter_metrics_follow_the_limiter() -> None:
    registry = CollectorRegistry()
    limiter = Backpressure(CONFIG, name="api", registry=registry)
    permits = [limiter.try_acquire(), limiter.try_acquire()]
    with pytest.raises(BackpressureError):
        limiter.try_acquire()
    permits[0].release("success", latency=0.25)
    permits[1].release("dropped")
    lim = {"limiter": "api"}
    assert sample(registry, "backpressure_client_enabled", **lim) == 1
    assert sample(registry, "backpressure_client_window", **lim) == limiter.window
    assert sample(registry, "backpressure_client_window_min", **lim) == 2
    assert sample(registry, "backpressure_client_window_max", **lim) == 10
    assert sample(registry, "backpressure_client_window_cap", **lim) == 10
    assert sample(registry, "backpressure_client_in_flight", **lim) == 0
    assert sample(registry, "backpressure_client_waiting", **lim) == 0
    assert sample(registry, "backpressure_client_level", **lim) == 0
    assert sample(registry, "backpressure_client_admissions_total", decision="admitted", **lim) == 2
    assert sample(registry, "backpressure_client_admissions_total", decision="rejected", **lim) == 1
    for outcome, count in (("success", 1), ("dropped", 1), ("ignored", 0)):
        assert (
            sample(registry, "backpressure_client_completions_total", outcome=outcome, **lim)
            == count
        )
    stats = limiter.stats()
    assert (
        sample(registry, "backpressure_client_window_increases_total", **lim)
        == stats.window_increases
    )
    assert (
        sample(registry, "backpressure_client_window_decreases_total", **lim)
        == stats.window_decreases
    )
    assert sample(registry, "backpressure_client_wait_seconds_total", **lim) == 0
    assert sample(registry, "backpressure_client_request_duration_seconds_count", **lim) == 1
    assert sample(registry, "backpressure_client_request_duration_seconds_sum", **lim) == 0.25


def test_signal_metrics_show_firing_level_value_errors_and_durations() -> None:
    registry = CollectorRegistry()
    readings: list[Reading | Exception] = [Reading(firing=False, level=0.5, value=42.0)]

    def read() -> Reading:
        item = readings[-1]
        if isinstance(item, Exception):
            raise item
        return item

    limiter = Backpressure(
        CONFIG.replace(stale_after=60.0),
        name="graded",
        signals=[function_signal("depth", read, cadence=0.1)],
        registry=registry,
    )
    labels = {"limiter": "graded", "signal": "depth"}
    assert sample(registry, "backpressure_client_signal_polls_total", **labels) == 0
    assert math.isnan(sample(registry, "backpressure_client_signal_value", **labels) or 0.0)
    assert (
        sample(registry, "backpressure_client_signal_last_success_timestamp_seconds", **labels)
        is None
    )
    with limiter:
        wait_for(
            lambda: sample(registry, "backpressure_client_signal_level", **labels) == 0.5,
            3,
            what="the level metric",
        )
        assert sample(registry, "backpressure_client_signal_value", **labels) == 42.0
        assert sample(registry, "backpressure_client_signal_firing", **labels) == 0
        assert sample(registry, "backpressure_client_level", limiter="graded") == 0.5
        assert sample(registry, "backpressure_client_window_cap", limiter="graded") == 5
        last = sample(
            registry, "backpressure_client_signal_last_success_timestamp_seconds", **labels
        )
        assert last is not None
        assert abs(last - time.time()) < 5
        readings.append(SignalError("connection", "refused"))
        wait_for(
            lambda: (
                (
                    sample(
                        registry,
                        "backpressure_client_signal_errors_total",
                        reason="connection",
                        **labels,
                    )
                    or 0
                )
                >= 2
            ),
            3,
            what="the errors metric",
        )
        # Within stale_after, the last reading still counts.
        assert sample(registry, "backpressure_client_signal_stale", **labels) == 0
        assert sample(registry, "backpressure_client_signal_level", **labels) == 0.5
        assert (
            sample(registry, "backpressure_client_signal_errors_total", reason="http", **labels)
            == 0
        )
        count = sample(registry, "backpressure_client_signal_poll_duration_seconds_count", **labels)
        assert count is not None
        assert count >= 3
        assert (
            sample(
                registry,
                "backpressure_client_signal_poll_duration_seconds_bucket",
                le="+Inf",
                **labels,
            )
            == count
        )


def test_several_limiters_share_one_collector_per_registry() -> None:
    registry = CollectorRegistry()
    a = Backpressure(CONFIG, name="a", registry=registry)
    b = Backpressure(CONFIG.replace(congestion_window_max=20), name="b", registry=registry)
    assert sample(registry, "backpressure_client_window_max", limiter="a") == 10
    assert sample(registry, "backpressure_client_window_max", limiter="b") == 20
    text = generate_latest(registry).decode()
    assert text.count("# TYPE backpressure_client_window gauge") == 1
    del a, b


def test_same_name_newest_limiter_wins_and_a_warning_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="backpressure_client")
    old = Backpressure(CONFIG, name="dup", registry=registry)
    new = Backpressure(CONFIG.replace(congestion_window_max=30), name="dup", registry=registry)
    assert sample(registry, "backpressure_client_window_max", limiter="dup") == 30
    assert "two open limiters named 'dup'" in caplog.text
    assert "registry=None" in caplog.text
    del old, new


def test_replacing_a_closed_limiter_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="backpressure_client")
    old = Backpressure(CONFIG, name="job", registry=registry)
    old.close()
    assert sample(registry, "backpressure_client_window", limiter="job") is None
    Backpressure(CONFIG, name="job", registry=registry)
    assert caplog.text == ""


def test_a_garbage_collected_limiter_is_no_longer_exported() -> None:
    registry = CollectorRegistry()
    limiter = Backpressure(CONFIG, name="short", registry=registry)
    assert sample(registry, "backpressure_client_window", limiter="short") == 2
    del limiter
    gc.collect()
    assert sample(registry, "backpressure_client_window", limiter="short") is None


def test_a_limiter_with_signals_is_collected_without_being_closed() -> None:
    registry = CollectorRegistry()
    limiter = Backpressure(
        CONFIG, name="sig", signals=[function_signal("s", lambda: False)], registry=registry
    )
    assert (
        sample(registry, "backpressure_client_signal_polls_total", limiter="sig", signal="s") == 0
    )
    del limiter
    gc.collect()
    assert sample(registry, "backpressure_client_window", limiter="sig") is None


def test_names_clashing_with_another_collector_are_refused() -> None:
    registry = CollectorRegistry()
    Gauge("backpressure_client_window", "not ours", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Backpressure(CONFIG, registry=registry)


def test_no_registry_exports_nothing() -> None:
    Backpressure(CONFIG, name="invisible", registry=None)
    assert REGISTRY.get_sample_value("backpressure_client_window", {"limiter": "invisible"}) is None


def test_the_default_registry_is_the_global_one() -> None:
    limiter = Backpressure(CONFIG, name="test-metrics-global")
    assert (
        REGISTRY.get_sample_value("backpressure_client_window", {"limiter": "test-metrics-global"})
        == 2
    )
    del limiter


def test_metric_names_follow_the_conventions() -> None:
    registry = CollectorRegistry()
    limiter = Backpressure(
        CONFIG, name="n", signals=[function_signal("s", lambda: False)], registry=registry
    )
    names = {m.name for m in registry.collect()}
    assert all(n.startswith("backpressure_client_") for n in names)
    for metric in registry.collect():
        if metric.type == "counter":
            assert all(s.name.endswith("_total") for s in metric.samples)
    del limiter
