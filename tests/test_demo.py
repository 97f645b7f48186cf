"""The demo runs end to end against its real local service and tells the runs apart."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from backpressure_client._demo import DemoOptions, main, run_demo
from backpressure_client._demo_backend import DemoBackend


def test_the_demo_shows_the_limiter_sheds_load_before_the_service_does(tmp_path: Path) -> None:
    out = io.StringIO()
    options = DemoOptions(
        capacity=5, latency=0.05, overload=3.0, duration=3.0, signal="scrape", plot=None
    )
    unlimited, limited = run_demo(options, out)
    text = out.getvalue()
    assert "| no limiter |" in text
    assert "| with limiter |" in text
    assert unlimited.sent == limited.sent  # the same seeded load both times
    assert unlimited.rejected == 0
    assert limited.rejected > 0
    # Without the limiter the service sheds the overload itself (503s and
    # client timeouts); with it the client sheds it before the wire.
    wasted_unlimited = unlimited.unavailable + unlimited.timeouts
    wasted_limited = limited.unavailable + limited.timeouts
    assert wasted_unlimited > 0
    assert wasted_limited * 4 < wasted_unlimited
    assert limited.ok > 0
    assert all(window is not None and window >= 1 for _, window, _, _ in limited.series)


def test_the_demo_backend_answers_503_once_its_queue_is_full() -> None:
    import concurrent.futures

    import httpx

    with DemoBackend(capacity=1, latency=0.2, queue_limit=1) as backend:

        def get(_: int) -> int:
            with httpx.Client(timeout=5) as client:
                return client.get(backend.url + "/work").status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(get, range(6)))
        metrics = httpx.get(backend.url + "/metrics").text
    assert codes.count(200) >= 2  # one worked on, one queued
    assert codes.count(503) >= 1
    assert 'demo_backend_requests_total{code="503"}' in metrics


def test_bad_demo_options_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--capacity", "0", "--latency", "-1"])
    assert "--capacity 0" in str(info.value)
    assert "--latency -1.0" in str(info.value)


def test_demo_help_explains_the_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for knob in ("--capacity", "--overload", "--duration", "--signal", "--plot"):
        assert knob in help_text
