"""PromQL signals against a real local stub server: every response shape."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator

import pytest
from _stub_servers import Canned, StubServer, refused_url, scalar, vector, wait_for
from prometheus_api_client import PrometheusConnect

from backpressure_client import Backpressure, BackpressureConfig, ConfigError
from backpressure_client._promql import MAX_BODY_BYTES, PromQLSignal, evaluate_query_response
from backpressure_client._signals import Reading, SignalError

QUERY = "/api/v1/query"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def poll(stub: StubServer, canned: Canned, **kwargs: object) -> Reading:
    stub.set(QUERY, canned)
    sig = PromQLSignal("q", url=stub.url, **kwargs)  # type: ignore[arg-type]
    sig._bind_timeout(1.0)
    try:
        return sig.poll()
    finally:
        sig.close()


def failure(stub: StubServer, canned: Canned, **kwargs: object) -> SignalError:
    with pytest.raises(SignalError) as info:
        poll(stub, canned, **kwargs)
    return info.value


# -- boolean queries -----------------------------------------------------------------


def test_empty_vector_does_not_fire(stub: StubServer) -> None:
    assert poll(stub, Canned(body=vector())) == Reading(firing=False, value=None)


def test_non_empty_vector_fires_whatever_its_values(stub: StubServer) -> None:
    assert poll(stub, Canned(body=vector(0))) == Reading(firing=True, value=0.0)
    assert poll(stub, Canned(body=vector(0.2, 3))) == Reading(firing=True, value=3.0)


def test_vector_with_nan_and_inf_fires_and_reports_the_largest_number(stub: StubServer) -> None:
    reading = poll(stub, Canned(body=vector("NaN", "+Inf", "-Inf")))
    assert reading.firing
    assert reading.value == math.inf
    only_nan = poll(stub, Canned(body=vector("NaN")))
    assert only_nan == Reading(firing=True, value=None)


@pytest.mark.parametrize(
    ("value", "firing"),
    [("0", False), ("1", True), ("-2.5", True), ("+Inf", True), ("-Inf", True), ("NaN", False)],
)
def test_scalar_fires_when_not_zero_and_not_nan(stub: StubServer, value: str, firing: bool) -> None:
    assert poll(stub, Canned(body=scalar(value))).firing is firing


def test_matrix_result_is_a_response_error(stub: StubServer) -> None:
    body = json.dumps(
        {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "1"]]}]},
        }
    ).encode()
    err = failure(stub, Canned(body=body))
    assert err.reason == "response"
    assert "matrix" in str(err)
    assert "rate()" in str(err)


def test_string_result_is_a_response_error(stub: StubServer) -> None:
    body = json.dumps(
        {"status": "success", "data": {"resultType": "string", "result": [1, "hello"]}}
    ).encode()
    err = failure(stub, Canned(body=body))
    assert (err.reason, "string" in str(err)) == ("response", True)


def test_status_error_is_a_query_error_with_prometheus_message(stub: StubServer) -> None:
    body = json.dumps(
        {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
    ).encode()
    err = failure(stub, Canned(status=400, body=body))
    assert err.reason == "query"
    assert "bad_data" in str(err)
    assert "parse error" in str(err)


def test_evaluation_timeout_reported_by_prometheus_is_a_timeout(stub: StubServer) -> None:
    body = json.dumps(
        {"status": "error", "errorType": "timeout", "error": "query timed out"}
    ).encode()
    assert failure(stub, Canned(status=503, body=body)).reason == "timeout"


def test_html_502_page_is_an_http_error_without_the_page(stub: StubServer) -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1>secret-token-in-page</body></html>"
    err = failure(stub, Canned(status=502, body=page, content_type="text/html"))
    assert err.reason == "http"
    assert "HTTP 502" in str(err)
    assert "text/html" in str(err)
    assert "secret-token-in-page" not in str(err)


def test_truncated_json_is_a_response_error(stub: StubServer) -> None:
    err = failure(stub, Canned(body=vector(1)[:-7]))
    assert err.reason == "response"
    assert "not valid JSON" in str(err)


def test_json_that_is_not_a_query_result_is_a_response_error(stub: StubServer) -> None:
    assert failure(stub, Canned(body=b'{"hello": "world"}')).reason == "response"
    assert failure(stub, Canned(body=b"[1, 2]")).reason == "response"
    bad_sample = json.dumps(
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]},
        }
    ).encode()
    assert failure(stub, Canned(body=bad_sample)).reason == "response"


def test_timeout_fails_fast(stub: StubServer) -> None:
    stub.set(QUERY, Canned(body=vector(1), delay=5))
    sig = PromQLSignal("q", url=stub.url)
    sig._bind_timeout(0.2)
    start = time.monotonic()
    with pytest.raises(SignalError) as info:
        sig.poll()
    sig.close()
    assert time.monotonic() - start < 1.5
    assert info.value.reason == "timeout"


def test_refused_connection_is_a_connection_error() -> None:
    sig = PromQLSignal("q", url=refused_url())
    with pytest.raises(SignalError) as info:
        sig.poll()
    sig.close()
    assert info.value.reason == "connection"
    assert "refused" in str(info.value).lower()


def test_a_503_is_not_retried(stub: StubServer) -> None:
    # prometheus-api-client's default Retry would try 3 more times, sleeping.
    stub.set(QUERY, Canned(status=503, body=b"busy", content_type="text/plain"))
    sig = PromQLSignal("q", prometheus=PrometheusConnect(url=stub.url))
    start = time.monotonic()
    with pytest.raises(SignalError):
        sig.poll()
    sig.close()
    assert time.monotonic() - start < 0.5
    assert len(stub.seen) == 1


# -- graded queries -------------------------------------------------------------------


def test_graded_query_turns_its_one_sample_into_a_level(stub: StubServer) -> None:
    reading = poll(stub, Canned(body=vector(75)), warning=50, emergency=100)
    assert reading.level == pytest.approx(1 - math.exp(-2))
    assert reading.value == 75.0
    assert not reading.firing


def test_graded_query_fires_at_level_one(stub: StubServer) -> None:
    assert poll(stub, Canned(body=scalar(100)), warning=50, emergency=100) == Reading(
        firing=True, level=1.0, value=100.0
    )
    below = poll(stub, Canned(body=scalar(10)), warning=50, emergency=100)
    assert (below.firing, below.level) == (False, 0.0)


@pytest.mark.parametrize("body", [vector(), vector(1, 2), vector("NaN"), scalar("NaN")])
def test_graded_query_needs_exactly_one_number(stub: StubServer, body: bytes) -> None:
    assert failure(stub, Canned(body=body), warning=1, emergency=2).reason == "response"


def test_graded_query_handles_infinities(stub: StubServer) -> None:
    assert poll(stub, Canned(body=vector("+Inf")), warning=1, emergency=2).level == 1.0
    assert poll(stub, Canned(body=vector("-Inf")), warning=1, emergency=2).level == 0.0


# -- the request ------------------------------------------------------------------------


def test_the_seed_url_form_is_accepted_and_the_timeout_is_sent(stub: StubServer) -> None:
    stub.set(QUERY, Canned(body=vector()))
    sig = PromQLSignal("up == 0", url=stub.url + "/api/v1/query")
    sig._bind_timeout(2.5)
    sig.poll()
    sig.close()
    seen = stub.seen[-1]
    assert seen.path == QUERY
    assert seen.query == {"query": ["up == 0"], "timeout": ["2500ms"]}


def test_a_configured_prometheus_connect_supplies_url_headers_auth_and_method(
    stub: StubServer,
) -> None:
    stub.set(QUERY, Canned(body=vector(1)))
    prom = PrometheusConnect(
        url=stub.url, headers={"X-Scope-OrgID": "tenant-1"}, auth=("alice", "pw"), method="POST"
    )
    sig = PromQLSignal("up", prometheus=prom)
    assert sig.poll().firing
    sig.close()
    prom.close()
    seen = stub.seen[-1]
    assert seen.method == "POST"
    assert seen.query["query"] == ["up"]
    assert seen.headers["X-Scope-OrgID"] == "tenant-1"
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()


def test_user_info_in_the_url_is_sent_as_basic_auth_and_never_shown(stub: StubServer) -> None:
    stub.set(QUERY, Canned(status=500, body=b"oops", content_type="text/plain"))
    url = stub.url.replace("http://", "http://bob:hunter2@")
    sig = PromQLSignal("up", url=url)
    with pytest.raises(SignalError) as info:
        sig.poll()
    sig.close()
    assert stub.seen[-1].headers["Authorization"].startswith("Basic ")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(sig)


def test_the_default_name_is_the_query() -> None:
    sig = PromQLSignal("  sum(rate(x[5m]))\n  > 1 ", url="http://prom:9090")
    assert sig.name == "sum(rate(x[5m])) > 1"
    assert PromQLSignal("up", url="http://p:9090", name="up").name == "up"


def test_bad_arguments_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        PromQLSignal(
            "",
            url="ftp://x",
            warning=1,
            curve=0,
            cadence=0,
            failure_policy="never",  # type: ignore[arg-type]
        )
    assert len(info.value.problems) == 6


def test_url_and_prometheus_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        PromQLSignal("up")


def test_evaluate_query_response_needs_no_server() -> None:
    assert evaluate_query_response(200, vector(1)).firing
    with pytest.raises(SignalError):
        evaluate_query_response(200, b"")


# -- through a limiter ---------------------------------------------------------------------


def test_config_queries_become_signals_that_fire(stub: StubServer) -> None:
    stub.set(QUERY, Canned(body=vector(1)))
    config = BackpressureConfig(
        backpressure_monitoring_url=stub.url + "/api/v1/query",
        backpressure_queries=("up > 0",),
        monitoring_cadence=0.2,
        congestion_window_min=1,
        congestion_window_max=8,
    )
    limiter = Backpressure(config, registry=None)
    with limiter:
        deadline = time.monotonic() + 3
        while limiter.firing != ("up > 0",) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limiter.firing == ("up > 0",)
        stub.set(QUERY, Canned(body=vector()))
        deadline = time.monotonic() + 3
        while limiter.firing and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limiter.firing == ()
    assert stub.seen[0].query["timeout"] == ["50ms"]  # a quarter of the cadence


# -- the URL's query string, whole-poll deadline, body cap, PrometheusConnect internals ----


def test_query_parameters_of_the_url_reach_prometheus_with_basic_auth_never_logged(
    stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    stub.set(QUERY, Canned(status=500, body=b"oops", content_type="text/plain"))
    url = stub.url.replace("http://", "http://bob:hunter2@") + "/api/v1/query?token=s3cret&org=7"
    config = BackpressureConfig(
        backpressure_monitoring_url=url,
        backpressure_queries=("up",),
        monitoring_cadence=0.2,
        congestion_window_min=1,
        congestion_window_max=8,
    )
    assert config.prometheus_base_url == stub.url.replace("http://", "http://bob:hunter2@")
    caplog.set_level("DEBUG", logger="backpressure_client")
    with Backpressure(config, registry=None) as limiter:
        wait_for(lambda: limiter.signal_stats()[0].errors >= 1, 3, what="a failed poll")
    seen = stub.seen[0]
    assert seen.path == QUERY
    assert seen.query == {"token": ["s3cret"], "org": ["7"], "query": ["up"], "timeout": ["50ms"]}
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(b"bob:hunter2").decode()
    assert "HTTP 500" in caplog.text
    assert "hunter2" not in caplog.text
    assert "s3cret" not in caplog.text


def test_url_query_parameters_stay_in_the_url_of_a_post_query(stub: StubServer) -> None:
    stub.set(QUERY, Canned(body=vector(1)))
    prom = PrometheusConnect(url=stub.url + "/?token=abc", method="POST")
    sig = PromQLSignal("up", prometheus=prom)
    try:
        assert sig.poll().firing
    finally:
        sig.close()
        prom.close()
    seen = stub.seen[-1]
    assert (seen.method, seen.path) == ("POST", QUERY)
    assert seen.query["token"] == ["abc"]
    assert seen.query["query"] == ["up"]
    assert b"token" not in seen.body


def test_a_trickling_answer_times_out_at_the_poll_deadline(stub: StubServer) -> None:
    # One byte every 0.3 s: each read succeeds, the whole answer takes ~40 s.
    stub.set(QUERY, Canned(body=vector(1), trickle=0.3))
    sig = PromQLSignal("q", url=stub.url)
    sig._bind_timeout(0.5)
    start = time.monotonic()
    try:
        with pytest.raises(SignalError) as info:
            sig.poll()
    finally:
        sig.close()
    assert info.value.reason == "timeout"
    assert time.monotonic() - start < 3  # not the trickle's 40 s


def test_an_oversized_answer_is_refused(stub: StubServer) -> None:
    err = failure(stub, Canned(body=b" " * (MAX_BODY_BYTES + 1) + vector(1)))
    assert err.reason == "response"
    assert "larger than" in str(err)


def test_a_prometheus_connect_without_a_session_is_refused_at_construction() -> None:
    class NotQuitePrometheusConnect:
        url = "http://prom:9090"

    with pytest.raises(ConfigError, match="_session"):
        PromQLSignal("up", prometheus=NotQuitePrometheusConnect())  # type: ignore[arg-type]
