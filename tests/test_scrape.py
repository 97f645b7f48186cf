"""Direct-scrape signals: evaluation, and fetching from a real local server."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator

import pytest
from _stub_servers import Canned, StubServer, refused_url

from backpressure_client import ConfigError
from backpressure_client._scrape import ScrapeSignal, evaluate_exposition
from backpressure_client._signals import Reading, SignalError

PAGE = """\
# HELP queue_depth Jobs waiting.
# TYPE queue_depth gauge
queue_depth{queue="jobs",shard="a"} 30
queue_depth{queue="jobs",shard="b"} 50
queue_depth{queue="mail",shard="a"} 5
queue_depth{queue="dead",shard="a"} NaN
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200"} 100
http_requests_total{code="503"} 7
# HELP errors_total Errors, none yet.
# TYPE errors_total counter
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 3
latency_seconds_bucket{le="+Inf"} 4
latency_seconds_count 4
latency_seconds_sum 0.9
"""


def value(metric: str, **kwargs: object) -> float | None:
    return evaluate_exposition(PAGE, metric, threshold=0, **kwargs).value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [("sum", 85.0), ("max", 50.0), ("min", 5.0), ("avg", 85.0 / 3), ("count", 3.0)],
)
def test_aggregates_skip_nan_samples(aggregate: str, expected: float) -> None:
    assert value("queue_depth", aggregate=aggregate) == pytest.approx(expected)


def test_label_matchers_select_samples_exactly_or_by_pattern() -> None:
    assert value("queue_depth", labels={"queue": "jobs"}) == 80.0
    assert value("queue_depth", labels={"queue": re.compile("jobs|mail"), "shard": "a"}) == 35.0
    assert value("queue_depth", labels={"queue": re.compile("job")}) == 0.0  # full match only


def test_counter_samples_match_by_sample_or_family_name() -> None:
    assert value("http_requests_total", labels={"code": "503"}) == 7.0
    assert value("http_requests", labels={"code": "503"}) == 7.0


def test_histogram_samples_can_be_read() -> None:
    assert value("latency_seconds_count") == 4.0
    assert value("latency_seconds_bucket", labels={"le": "0.1"}) == 3.0


@pytest.mark.parametrize(
    ("op", "threshold", "firing"),
    [
        (">", 84, True),
        (">", 85, False),
        (">=", 85, True),
        ("<", 86, True),
        ("<=", 84, False),
        ("==", 85, True),
        ("!=", 85, False),
    ],
)
def test_comparison_with_the_threshold(op: str, threshold: float, firing: bool) -> None:
    reading = evaluate_exposition(PAGE, "queue_depth", op=op, threshold=threshold)  # type: ignore[arg-type]
    assert reading == Reading(firing=firing, value=85.0)


def test_no_matching_sample_never_fires() -> None:
    assert evaluate_exposition(PAGE, "queue_depth", labels={"queue": "x"}, threshold=-1) == Reading(
        firing=True, value=0.0
    )  # sum of nothing is 0, and 0 > -1
    none = evaluate_exposition(
        PAGE, "queue_depth", labels={"queue": "x"}, aggregate="max", threshold=-1
    )
    assert none == Reading(firing=False, value=None)


def test_a_declared_metric_without_samples_is_not_an_error() -> None:
    assert evaluate_exposition(PAGE, "errors_total", threshold=0) == Reading(
        firing=False, value=0.0
    )


def test_a_missing_metric_is_a_response_error() -> None:
    with pytest.raises(SignalError, match="no metric named 'queue_dpeth'") as info:
        evaluate_exposition(PAGE, "queue_dpeth", threshold=1)
    assert info.value.reason == "response"


def test_graded_scrape_gives_a_level() -> None:
    reading = evaluate_exposition(PAGE, "queue_depth", aggregate="max", warning=25, emergency=75)
    assert reading.level == pytest.approx(1 - math.exp(-4 * 0.5))
    assert reading.value == 50.0
    assert not reading.firing
    top = evaluate_exposition(PAGE, "queue_depth", warning=25, emergency=75)
    assert (top.firing, top.level) == (True, 1.0)
    empty = evaluate_exposition(
        PAGE, "queue_depth", labels={"queue": "x"}, aggregate="max", warning=1, emergency=2
    )
    assert (empty.firing, empty.level) == (False, 0.0)


def test_garbage_is_a_response_error() -> None:
    with pytest.raises(SignalError) as info:
        evaluate_exposition("queue_depth{unterminated 1\n", "queue_depth", threshold=1)
    assert info.value.reason == "response"


def test_openmetrics_pages_are_parsed() -> None:
    text = "# TYPE queue_depth gauge\nqueue_depth 12\n# EOF\n"
    assert evaluate_exposition(text, "queue_depth", threshold=10, openmetrics=True).firing


# -- fetching ------------------------------------------------------------------------


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def scrape(url: str, **kwargs: object) -> ScrapeSignal:
    sig = ScrapeSignal(url, "queue_depth", **kwargs)  # type: ignore[arg-type]
    sig._bind_timeout(1.0)
    return sig


def test_scrape_signal_reads_a_metrics_page(stub: StubServer) -> None:
    stub.set("/metrics", Canned(body=PAGE.encode(), content_type="text/plain; version=0.0.4"))
    sig = scrape(stub.url + "/metrics", labels={"queue": "jobs"}, threshold=70)
    try:
        assert sig.poll() == Reading(firing=True, value=80.0)
    finally:
        sig.close()
    assert "text/plain" in stub.seen[-1].headers["Accept"]


def test_scrape_signal_reads_openmetrics_when_served(stub: StubServer) -> None:
    body = b"# TYPE queue_depth gauge\nqueue_depth 3\n# EOF\n"
    stub.set(
        "/metrics",
        Canned(body=body, content_type="application/openmetrics-text; version=1.0.0"),
    )
    sig = scrape(stub.url + "/metrics", threshold=2)
    try:
        assert sig.poll().firing
    finally:
        sig.close()


@pytest.mark.parametrize(
    ("canned", "reason"),
    [
        (Canned(status=502, body=b"<html>bad gateway</html>", content_type="text/html"), "http"),
        (Canned(body=b"queue_depth{{{ 1\n", content_type="text/plain"), "response"),
        (Canned(body=b"\xff\xfe\xfa", content_type="text/plain; charset=utf-8"), "response"),
        (Canned(body=b"other_metric 1\n", content_type="text/plain"), "response"),
    ],
)
def test_scrape_failures_have_reasons(stub: StubServer, canned: Canned, reason: str) -> None:
    stub.set("/metrics", canned)
    sig = scrape(stub.url + "/metrics", threshold=1)
    try:
        with pytest.raises(SignalError) as info:
            sig.poll()
    finally:
        sig.close()
    assert info.value.reason == reason


def test_scrape_timeout_fails_fast(stub: StubServer) -> None:
    stub.set("/metrics", Canned(body=PAGE.encode(), content_type="text/plain", delay=5))
    sig = scrape(stub.url + "/metrics", threshold=1)
    sig._bind_timeout(0.2)
    start = time.monotonic()
    try:
        with pytest.raises(SignalError) as info:
            sig.poll()
    finally:
        sig.close()
    assert time.monotonic() - start < 1.5
    assert info.value.reason == "timeout"


def test_scrape_refused_connection() -> None:
    sig = scrape(refused_url() + "/metrics", threshold=1)
    try:
        with pytest.raises(SignalError) as info:
            sig.poll()
    finally:
        sig.close()
    assert info.value.reason == "connection"


def test_scrape_credentials_stay_out_of_errors(stub: StubServer) -> None:
    stub.set("/metrics", Canned(status=401, body=b"no", content_type="text/plain"))
    sig = scrape(
        stub.url.replace("http://", "http://u:hunter2@") + "/metrics?token=s3cret", threshold=1
    )
    try:
        with pytest.raises(SignalError) as info:
            sig.poll()
    finally:
        sig.close()
    assert "hunter2" not in str(info.value)
    assert "s3cret" not in str(info.value)
    assert "hunter2" not in repr(sig)


def test_default_names_read_like_promql() -> None:
    assert (
        ScrapeSignal("http://b/metrics", "queue_depth", labels={"q": "jobs"}, threshold=100).name
        == 'sum(queue_depth{q="jobs"}) > 100'
    )
    graded = ScrapeSignal(
        "http://b/metrics", "queue_depth", aggregate="max", warning=10, emergency=50
    )
    assert graded.name == "max(queue_depth) graded [10, 50]"


def test_bad_scrape_arguments_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        ScrapeSignal(
            "file:///etc/passwd",
            "bad name",
            aggregate="median",  # type: ignore[arg-type]
            op="=~",  # type: ignore[arg-type]
        )
    assert len(info.value.problems) == 5  # url, metric, aggregate, op, no threshold
    with pytest.raises(ConfigError, match="not both"):
        ScrapeSignal("http://b/metrics", "x", threshold=1, warning=1, emergency=2)


def test_a_trickling_page_times_out_at_the_scrape_deadline(stub: StubServer) -> None:
    # One byte every 0.3 s: each read succeeds, the whole page takes minutes.
    stub.set("/metrics", Canned(body=PAGE.encode(), content_type="text/plain", trickle=0.3))
    sig = scrape(stub.url + "/metrics", threshold=1)
    sig._bind_timeout(0.5)
    start = time.monotonic()
    try:
        with pytest.raises(SignalError) as info:
            sig.poll()
    finally:
        sig.close()
    assert info.value.reason == "timeout"
    assert time.monotonic() - start < 3  # not the trickle's minutes


def test_the_scrape_url_is_checked_like_every_other_url() -> None:
    with pytest.raises(ConfigError) as info:
        ScrapeSignal("http://u:hunter2@/metrics", "x", threshold=1)
    (problem,) = info.value.problems
    assert "with a host" in problem
    assert "hunter2" not in problem
