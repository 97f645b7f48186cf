"""The httpx transports: admission, release on every path, classification, waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from email.utils import format_datetime

import anyio
import anyio.lowlevel
import httpx
import pytest
import respx
from anyio import wait_all_tasks_blocked

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    ManualClock,
    Outcome,
    WaitTimeoutError,
)
from backpressure_client._transport import (
    AsyncBackpressureTransport,
    BackpressureTransport,
    classify_http_exception,
    classify_response,
    parse_retry_after,
)

URL = "http://service.test/item"


def make_limiter(
    window: int = 4, *, maximum: int | None = None, clock: ManualClock | None = None
) -> Backpressure:
    config = BackpressureConfig(
        congestion_window_min=window, congestion_window_max=maximum or window
    )
    return Backpressure(config, clock=clock, registry=None)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll *condition* (a state the test drives towards), failing after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


class TrackedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that records how it was read and closed."""

    def __init__(
        self,
        chunks: tuple[bytes, ...] = (b"hello, ", b"world"),
        fail_with: BaseException | None = None,
    ) -> None:
        self.chunks = chunks
        self.fail_with = fail_with
        self.closes = 0

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.fail_with is not None:
            raise self.fail_with

    def close(self) -> None:
        self.closes += 1

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail_with is not None:
            raise self.fail_with

    async def aclose(self) -> None:
        self.closes += 1


def streaming_handler(
    streams: list[TrackedStream], status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        stream = TrackedStream()
        streams.append(stream)
        return httpx.Response(status, headers=headers, stream=stream)

    return handler


# -- admission and release (sync) ----------------------------------------------


def test_get_holds_the_slot_on_the_wire_and_releases_after_the_body() -> None:
    bp = make_limiter(2)
    seen: list[int] = []
    streams: list[TrackedStream] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(bp.in_flight)
        return streaming_handler(streams)(request)

    with httpx.Client(transport=BackpressureTransport(bp, httpx.MockTransport(handler))) as client:
        response = client.get(URL)
    assert response.text == "hello, world"
    assert seen == [1]
    assert bp.in_flight == 0
    assert streams[0].closes == 1
    stats = bp.stats()
    assert (stats.success, stats.dropped, stats.ignored, stats.latency_count) == (1, 0, 0, 1)


def test_stream_block_holds_the_slot_until_it_exits() -> None:
    bp = make_limiter(2)
    streams: list[TrackedStream] = []
    transport = BackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    with httpx.Client(transport=transport) as client:
        with client.stream("GET", URL) as response:
            assert bp.in_flight == 1
            chunks = response.iter_raw()
            assert next(chunks) == b"hello, "
            assert bp.in_flight == 1  # half-read: still on the wire
        assert bp.in_flight == 0
    assert streams[0].closes == 1
    assert bp.stats().success == 1


def test_send_with_stream_true_holds_the_slot_until_response_close() -> None:
    bp = make_limiter(2)
    streams: list[TrackedStream] = []
    transport = BackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    with httpx.Client(transport=transport) as client:
        response = client.send(client.build_request("GET", URL), stream=True)
        assert bp.in_flight == 1
        response.close()
        assert bp.in_flight == 0
        response.close()  # a second close changes nothing
    assert streams[0].closes == 1
    assert bp.stats().success == 1


def test_a_response_already_read_by_the_inner_transport_releases_at_once() -> None:
    bp = make_limiter(2)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, content=b"in memory"))
    transport = BackpressureTransport(bp, inner)
    with httpx.Client(transport=transport) as client:
        response = client.send(client.build_request("GET", URL), stream=True)
        assert bp.in_flight == 0  # nothing of it is left on the wire
        assert response.read() == b"in memory"
    assert bp.stats().success == 1


def test_a_rejected_request_raises_and_sends_nothing() -> None:
    bp = make_limiter(1)
    streams: list[TrackedStream] = []
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return streaming_handler(streams)(request)

    with httpx.Client(transport=BackpressureTransport(bp, httpx.MockTransport(handler))) as client:
        with client.stream("GET", URL), pytest.raises(BackpressureError) as caught:
            client.post(URL, content=b"never sent")
        assert type(caught.value) is BackpressureError
        assert (caught.value.window, caught.value.in_flight) == (1, 1)
        assert len(sent) == 1
        client.get(URL)  # the slot is free again
    assert len(sent) == 2
    assert bp.stats().rejected == 1


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (httpx.ConnectError("refused"), Outcome.IGNORED),
        (httpx.ReadTimeout("slow"), Outcome.DROPPED),
        (httpx.PoolTimeout("pool"), Outcome.DROPPED),
        (TimeoutError("socket"), Outcome.DROPPED),
        (RuntimeError("bug"), Outcome.IGNORED),
        (KeyboardInterrupt(), Outcome.IGNORED),
    ],
)
def test_the_inner_transport_raising_releases_the_slot_with_its_outcome(
    error: BaseException, outcome: Outcome
) -> None:
    bp = make_limiter(2, maximum=8)

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    client = httpx.Client(transport=BackpressureTransport(bp, httpx.MockTransport(handler)))
    with client, pytest.raises(type(error)):
        client.get(URL)
    stats = bp.stats()
    assert stats.in_flight == 0
    assert getattr(stats, outcome.value) == 1
    assert stats.latency_count == 1


@pytest.mark.parametrize(
    ("error", "outcome"),
    [(httpx.ReadError("reset"), Outcome.IGNORED), (httpx.ReadTimeout("slow"), Outcome.DROPPED)],
)
def test_body_iteration_raising_releases_the_slot_with_its_outcome(
    error: BaseException, outcome: Outcome
) -> None:
    bp = make_limiter(2, maximum=8)
    stream = TrackedStream(fail_with=error)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        with pytest.raises(type(error)):
            client.get(URL)
        assert bp.in_flight == 0
        with client.stream("GET", URL) as response:
            with pytest.raises(type(error)):
                response.read()
            assert bp.in_flight == 0  # released when iteration raised, before the block exits
    stats = bp.stats()
    assert getattr(stats, outcome.value) == 2
    assert stats.success == 0
    assert stream.closes == 2


def test_a_reader_that_abandons_the_body_releases_once_as_a_success() -> None:
    # As httpcore's PoolByteStream: closing the half-read body iterator (an
    # explicit close, or a `break` out of the loop in CPython) closes the body.
    bp = make_limiter(2)
    streams: list[TrackedStream] = []
    transport = BackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    with httpx.Client(transport=transport) as client, client.stream("GET", URL) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"hello, "
        assert bp.in_flight == 1
        chunks.close()  # type: ignore[attr-defined]  # a generator at run time
        assert bp.in_flight == 0
    assert streams[0].closes == 1
    stats = bp.stats()
    assert (stats.success, stats.ignored, stats.latency_count) == (1, 0, 1)


def test_latency_is_measured_with_the_limiters_clock() -> None:
    clock = ManualClock()
    bp = make_limiter(2, clock=clock)
    streams: list[TrackedStream] = []

    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(0.25)
        return streaming_handler(streams)(request)

    transport = BackpressureTransport(bp, httpx.MockTransport(handler))
    with httpx.Client(transport=transport) as client, client.stream("GET", URL) as response:
        clock.advance(0.5)  # the body is read later: it counts
        response.read()
    assert bp.stats().latency_seconds == pytest.approx(0.75)


# -- classification --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (302, Outcome.SUCCESS),
        (304, Outcome.SUCCESS),
        (400, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (429, Outcome.DROPPED),
        (500, Outcome.IGNORED),
        (502, Outcome.IGNORED),
        (503, Outcome.DROPPED),
        (504, Outcome.IGNORED),
    ],
)
def test_the_default_classifier_by_status(status: int, outcome: Outcome) -> None:
    assert classify_response(httpx.Response(status)) is outcome
    bp = make_limiter(4, maximum=8)
    inner = httpx.MockTransport(lambda request: httpx.Response(status, stream=TrackedStream()))
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        assert client.get(URL).status_code == status
    assert getattr(bp.stats(), outcome.value) == 1


def test_a_429_shrinks_the_window_at_once_and_its_retry_after_reaches_rejections() -> None:
    clock = ManualClock(100.0)
    bp = make_limiter(4, maximum=8, clock=clock)
    inner = httpx.MockTransport(
        lambda request: httpx.Response(429, headers={"Retry-After": "30"}, content=b"slow down")
    )
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        client.get(URL)
        assert bp.window == 4  # already at the minimum
        assert bp.retry_after == pytest.approx(30.0)
        clock.advance(10.0)
        held = [bp.try_acquire() for _ in range(4)]
        with pytest.raises(BackpressureError) as caught:
            client.get(URL)
        assert caught.value.retry_after == pytest.approx(20.0)
        for permit in held:
            permit.release()
        clock.advance(25.0)
        assert bp.retry_after is None


def test_a_503_halves_the_window() -> None:
    bp = make_limiter(2, maximum=16)
    for _ in range(30):  # grow the window first
        with bp.slot(), bp.slot():
            pass
    grown = bp.window
    assert grown > 4
    inner = httpx.MockTransport(lambda request: httpx.Response(503))
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        client.get(URL)
    assert bp.window == max(2, grown // 2)


def test_retry_after_as_an_http_date_is_honoured() -> None:
    bp = make_limiter(2)
    when = format_datetime(datetime.fromtimestamp(time.time() + 120, tz=timezone.utc), usegmt=True)
    inner = httpx.MockTransport(lambda request: httpx.Response(503, headers={"Retry-After": when}))
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        client.get(URL)
    assert bp.retry_after is not None
    assert 100 < bp.retry_after <= 120


def test_retry_after_on_a_success_is_not_a_hint() -> None:
    bp = make_limiter(2)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, headers={"Retry-After": "9"}))
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        client.get(URL)
    assert bp.retry_after is None


def test_an_unreadable_retry_after_is_ignored() -> None:
    bp = make_limiter(2)
    inner = httpx.MockTransport(lambda request: httpx.Response(429, headers={"Retry-After": "?"}))
    with httpx.Client(transport=BackpressureTransport(bp, inner)) as client:
        client.get(URL)
    assert bp.retry_after is None
    assert bp.stats().dropped == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Thu, 01 Jan 1970 00:02:00 GMT", 60.0),  # now = 60
        ("Thu, 01 Jan 1970 00:00:30 GMT", 0.0),  # in the past
        ("9" * 400, 86_400.0),
        ("1e400", 86_400.0),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("Thu, 99 Foo 1970", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, now=60.0) == expected


def test_a_replacement_classifier_decides_the_outcome() -> None:
    bp = make_limiter(4, maximum=8)

    def classify(response: httpx.Response) -> Outcome | str:
        if response.status_code == 418:
            return "dropped"
        return classify_response(response)

    inner = httpx.MockTransport(
        lambda request: httpx.Response(418, headers={"Retry-After": "5"}, stream=TrackedStream())
    )
    transport = BackpressureTransport(bp, inner, classify=classify)
    with httpx.Client(transport=transport) as client:
        client.get(URL)
    assert bp.stats().dropped == 1
    assert bp.retry_after is not None  # a dropped outcome passes Retry-After on


def test_a_failing_classifier_releases_the_slot_and_closes_the_body() -> None:
    bp = make_limiter(2)
    stream = TrackedStream()
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))

    def classify(response: httpx.Response) -> Outcome:
        raise LookupError("classifier bug")

    transport = BackpressureTransport(bp, inner, classify=classify)
    with httpx.Client(transport=transport) as client, pytest.raises(LookupError):
        client.get(URL)
    assert bp.in_flight == 0
    assert bp.stats().ignored == 1
    assert stream.closes == 1


def test_a_failing_error_classifier_still_releases_the_slot() -> None:
    bp = make_limiter(2)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def classify_error(exc: BaseException) -> Outcome:
        return "not an outcome"  # type: ignore[return-value]

    transport = BackpressureTransport(
        bp, httpx.MockTransport(handler), classify_error=classify_error
    )
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(ValueError, match="not an") as caught,
    ):
        client.get(URL)
    assert isinstance(caught.value.__context__, httpx.ConnectError)
    assert bp.in_flight == 0
    assert bp.stats().ignored == 1


def test_classify_http_exception() -> None:
    request = httpx.Request("GET", URL)
    too_many = httpx.Response(429, request=request)
    not_found = httpx.Response(404, request=request)
    assert classify_http_exception(httpx.ConnectTimeout("t")) is Outcome.DROPPED
    assert classify_http_exception(TimeoutError()) is Outcome.DROPPED
    assert classify_http_exception(httpx.ConnectError("c")) is Outcome.IGNORED
    error = httpx.HTTPStatusError("429", request=request, response=too_many)
    assert classify_http_exception(error) is Outcome.DROPPED
    error = httpx.HTTPStatusError("404", request=request, response=not_found)
    assert classify_http_exception(error) is Outcome.SUCCESS
    assert classify_http_exception(ValueError()) is Outcome.IGNORED


# -- waiting for a slot (sync) -----------------------------------------------------


def test_a_transport_with_wait_timeout_waits_for_a_slot() -> None:
    bp = make_limiter(1)
    streams: list[TrackedStream] = []
    transport = BackpressureTransport(
        bp, httpx.MockTransport(streaming_handler(streams)), wait_timeout=10.0
    )
    results: list[int] = []
    with httpx.Client(transport=transport) as client:
        with client.stream("GET", URL):
            waiter = threading.Thread(target=lambda: results.append(client.get(URL).status_code))
            waiter.start()
            wait_until(lambda: bp.stats().waiting == 1)
            assert results == []
        waiter.join(5)
    assert results == [200]
    assert bp.stats().rejected == 0


def test_a_wait_that_times_out_raises_wait_timeout_error_and_sends_nothing() -> None:
    bp = make_limiter(1)
    streams: list[TrackedStream] = []
    transport = BackpressureTransport(
        bp, httpx.MockTransport(streaming_handler(streams)), wait_timeout=0.01
    )
    client = httpx.Client(transport=transport)
    with client, client.stream("GET", URL), pytest.raises(WaitTimeoutError):
        client.get(URL)
    assert len(streams) == 1


def test_the_request_extension_overrides_the_transport_wait() -> None:
    bp = make_limiter(1)
    streams: list[TrackedStream] = []
    waiting = BackpressureTransport(
        bp, httpx.MockTransport(streaming_handler(streams)), wait_timeout=10.0
    )
    failing_fast = BackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    waits = httpx.Client(transport=waiting)
    fast = httpx.Client(transport=failing_fast)
    with waits, fast, waits.stream("GET", URL):
        # Fail fast on a waiting transport: the plain error, at once.
        with pytest.raises(BackpressureError) as caught:
            waits.get(URL, extensions={"backpressure_timeout": 0})
        assert type(caught.value) is BackpressureError
        # Wait on a fail-fast transport: it waited, then gave up.
        with pytest.raises(WaitTimeoutError):
            fast.get(URL, extensions={"backpressure_timeout": 0.01})
        # None means the transport's own setting (fail fast here).
        with pytest.raises(BackpressureError) as caught:
            fast.get(URL, extensions={"backpressure_timeout": None})
        assert type(caught.value) is BackpressureError
    assert len(streams) == 1


@pytest.mark.parametrize(
    ("value", "error"), [("2", TypeError), (-1, ValueError), (float("nan"), ValueError)]
)
def test_a_bad_request_extension_is_refused_before_admission(
    value: object, error: type[Exception]
) -> None:
    bp = make_limiter(1)
    transport = BackpressureTransport(bp, httpx.MockTransport(lambda r: httpx.Response(200)))
    client = httpx.Client(transport=transport)
    with client, pytest.raises(error, match="backpressure_timeout"):
        client.get(URL, extensions={"backpressure_timeout": value})
    assert bp.stats().admitted == 0


def test_bad_constructor_arguments_are_refused() -> None:
    bp = make_limiter(1)
    with pytest.raises(TypeError, match="Backpressure"):
        BackpressureTransport(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait_timeout"):
        BackpressureTransport(bp, wait_timeout=-1)
    with pytest.raises(TypeError, match="callable"):
        BackpressureTransport(bp, classify=None)  # type: ignore[arg-type]


def test_a_limiters_configured_wait_timeout_is_the_default() -> None:
    config = BackpressureConfig(congestion_window_min=1, congestion_window_max=1, wait_timeout=0.01)
    bp = Backpressure(config, registry=None)
    streams: list[TrackedStream] = []
    transport = BackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    client = httpx.Client(transport=transport)
    with client, client.stream("GET", URL), pytest.raises(WaitTimeoutError):
        client.get(URL)


# -- the transport's lifecycle -----------------------------------------------------


class ClosingTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.closed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def test_close_closes_the_inner_transport() -> None:
    inner = ClosingTransport()
    with httpx.Client(transport=BackpressureTransport(make_limiter(), inner)) as client:
        client.get(URL)
    assert inner.closed == 1


def test_the_default_inner_transports() -> None:
    bp = make_limiter()
    assert "HTTPTransport" in repr(BackpressureTransport(bp))
    assert "AsyncHTTPTransport" in repr(AsyncBackpressureTransport(bp))
    assert BackpressureTransport(bp).limiter is bp


def test_the_default_inner_transport_through_respx() -> None:
    bp = make_limiter(2, maximum=8)
    with respx.mock(assert_all_called=True) as router:
        router.get(URL).respond(429, headers={"Retry-After": "12"})
        router.get("http://service.test/ok").respond(200, json={"ok": True})
        with httpx.Client(transport=BackpressureTransport(bp)) as client:
            assert client.get(URL).status_code == 429
            with client.stream("GET", "http://service.test/ok") as response:
                assert bp.in_flight == 1
                assert response.read() == b'{"ok":true}'
            assert bp.in_flight == 0
    stats = bp.stats()
    assert (stats.dropped, stats.success) == (1, 1)
    assert bp.retry_after is not None


def test_respx_router_as_the_inner_transport() -> None:
    bp = make_limiter(2)
    router = respx.Router(assert_all_called=False)
    route = router.post(URL).respond(201)
    transport = BackpressureTransport(bp, httpx.MockTransport(router.handler))
    with httpx.Client(transport=transport) as client:
        assert client.post(URL, json={"a": 1}).status_code == 201
    assert route.call_count == 1
    assert bp.stats().success == 1


# -- the window bounds the wire (threads) --------------------------------------------


class CountingStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, owner: CountingTransport) -> None:
        self.owner = owner
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.left()

    async def aclose(self) -> None:
        self.close()


class CountingTransport(httpx.BaseTransport):
    """Counts requests on the wire: from handle_request until the body is closed.

    The first *window* requests wait at a barrier until all of them are on
    the wire, proving that the window is reached, not only respected.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.arrivals = 0
        self.first_wave = threading.Barrier(window)

    def arrived(self) -> int:
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
            self.arrivals += 1
            return self.arrivals

    def left(self) -> None:
        with self.lock:
            self.current -= 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.arrived() <= self.window:
            self.first_wave.wait(timeout=10)
        return httpx.Response(200, stream=CountingStream(self))


def test_many_threads_sharing_a_client_never_exceed_the_window_at_the_wire() -> None:
    window, threads, per_thread = 4, 16, 25
    bp = make_limiter(window)
    inner = CountingTransport(window)
    transport = BackpressureTransport(bp, inner, wait_timeout=30.0)
    statuses: list[int] = []
    start = threading.Barrier(threads)

    def worker(client: httpx.Client) -> None:
        start.wait(timeout=10)
        statuses.extend(client.get(URL).status_code for _ in range(per_thread))

    with httpx.Client(transport=transport) as client:
        pool = [threading.Thread(target=worker, args=(client,)) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(30)
    assert statuses == [200] * threads * per_thread
    assert inner.peak == window
    assert inner.current == 0
    stats = bp.stats()
    assert stats.in_flight == 0
    assert stats.success == threads * per_thread


# -- composition -------------------------------------------------------------------


class RecordingStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, name: str, log: list[str]) -> None:
        self.stream, self.name, self.log = stream, name, log

    def __iter__(self) -> Iterator[bytes]:
        yield from self.stream

    def close(self) -> None:
        self.log.append(f"{self.name}: close")
        self.stream.close()


class RecordingTransport(httpx.BaseTransport):
    """Another wrapping transport, logging what passes through it."""

    def __init__(self, inner: httpx.BaseTransport, name: str, log: list[str]) -> None:
        self.inner, self.name, self.log = inner, name, log

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append(f"{self.name}: request")
        try:
            response = self.inner.handle_request(request)
        except Exception as exc:
            self.log.append(f"{self.name}: {type(exc).__name__}")
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = RecordingStream(response.stream, self.name, self.log)
        return response

    def close(self) -> None:
        self.log.append(f"{self.name}: transport closed")
        self.inner.close()


def test_composes_with_wrapping_transports_outside_and_inside() -> None:
    bp = make_limiter(1)
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(f"wire: in flight {bp.in_flight}")
        return httpx.Response(200, stream=TrackedStream())

    inside = RecordingTransport(httpx.MockTransport(handler), "inside", log)
    outside = RecordingTransport(BackpressureTransport(bp, inside), "outside", log)
    with httpx.Client(transport=outside) as client:
        with client.stream("GET", URL):
            log.append(f"block: in flight {bp.in_flight}")
            with pytest.raises(BackpressureError):
                client.get(URL)
        log.append(f"after: in flight {bp.in_flight}")
    assert log == [
        "outside: request",
        "inside: request",
        "wire: in flight 1",
        "block: in flight 1",
        "outside: request",  # the rejection passes out through the outer wrapper ...
        "outside: BackpressureError",  # ... and the inner one never saw the request
        "outside: close",
        "inside: close",
        "after: in flight 0",
        "outside: transport closed",
        "inside: transport closed",
    ]


# -- async -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_get_stream_and_send_release_when_the_response_closes() -> None:
    bp = make_limiter(2)
    streams: list[TrackedStream] = []
    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(URL)).text == "hello, world"
        assert bp.in_flight == 0
        async with client.stream("GET", URL):
            assert bp.in_flight == 1
        assert bp.in_flight == 0
        response = await client.send(client.build_request("GET", URL), stream=True)
        assert bp.in_flight == 1
        await response.aclose()
        await response.aclose()
        assert bp.in_flight == 0
    assert [s.closes for s in streams] == [1, 1, 1]
    stats = bp.stats()
    assert (stats.success, stats.ignored, stats.latency_count) == (3, 0, 3)


@pytest.mark.anyio
async def test_async_rejection_and_error_outcomes() -> None:
    bp = make_limiter(1, maximum=4)
    streams: list[TrackedStream] = []
    failing = TrackedStream(fail_with=httpx.ReadTimeout("slow body"))

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/connect":
            raise httpx.ConnectError("refused")
        if request.url.path == "/body":
            return httpx.Response(200, stream=failing)
        return streaming_handler(streams)(request)

    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://service.test") as client:
        async with client.stream("GET", "/"):
            with pytest.raises(BackpressureError):
                await client.get("/")
        assert len(streams) == 1
        with pytest.raises(httpx.ConnectError):
            await client.get("/connect")
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/body")
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.ignored, stats.dropped) == (0, 1, 1, 1)
    assert failing.closes == 1


@pytest.mark.anyio
async def test_a_task_cancelled_while_on_the_wire_releases_its_slot() -> None:
    bp = make_limiter(1)
    on_the_wire = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        on_the_wire.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(handler))
    client = httpx.AsyncClient(transport=transport)
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, URL)
        await on_the_wire.wait()
        assert bp.in_flight == 1
        tg.cancel_scope.cancel()
    stats = bp.stats()
    assert (stats.in_flight, stats.ignored, stats.dropped) == (0, 1, 0)


class StallingStream(httpx.AsyncByteStream):
    """Yields one chunk then stalls; its close needs a checkpoint to finish."""

    def __init__(self, started: anyio.Event) -> None:
        self.started = started
        self.closed_fully = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first"
        self.started.set()
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()  # raises if the close were not shielded
        self.closed_fully = True


@pytest.mark.anyio
async def test_a_task_cancelled_while_reading_the_body_releases_and_closes_shielded() -> None:
    bp = make_limiter(1)
    started = anyio.Event()
    stream = StallingStream(started)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    async with httpx.AsyncClient(transport=AsyncBackpressureTransport(bp, inner)) as client:

        async def read() -> None:
            async with client.stream("GET", URL) as response:
                await response.aread()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await started.wait()
            assert bp.in_flight == 1
            tg.cancel_scope.cancel()
    assert stream.closed_fully
    stats = bp.stats()
    assert (stats.in_flight, stats.ignored, stats.success) == (0, 1, 0)


@pytest.mark.anyio
async def test_a_timeout_while_reading_releases_the_slot() -> None:
    bp = make_limiter(1)
    started = anyio.Event()
    stream = StallingStream(started)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    async with httpx.AsyncClient(transport=AsyncBackpressureTransport(bp, inner)) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.get(URL)
    assert scope.cancelled_caught
    assert stream.closed_fully
    assert bp.in_flight == 0


@pytest.mark.anyio
async def test_an_async_transport_waits_for_a_slot_when_asked() -> None:
    bp = make_limiter(1)
    streams: list[TrackedStream] = []
    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(streaming_handler(streams)))
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=transport) as client:

        async def patient() -> None:
            response = await client.get(URL, extensions={"backpressure_timeout": 10})
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg, client.stream("GET", URL):
            tg.start_soon(patient)
            await wait_all_tasks_blocked()
            assert bp.stats().waiting == 1
            assert statuses == []
        assert statuses == [200]
        async with client.stream("GET", URL):
            with pytest.raises(WaitTimeoutError):
                await client.get(URL, extensions={"backpressure_timeout": 0.01})
    assert bp.stats().rejected == 1


@pytest.mark.anyio
async def test_a_task_cancelled_while_waiting_for_a_slot_leaves_no_trace() -> None:
    bp = make_limiter(1)
    streams: list[TrackedStream] = []
    transport = AsyncBackpressureTransport(
        bp, httpx.MockTransport(streaming_handler(streams)), wait_timeout=10
    )
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", URL), anyio.create_task_group() as tg:
            tg.start_soon(client.get, URL)
            await wait_all_tasks_blocked()
            assert bp.stats().waiting == 1
            tg.cancel_scope.cancel()
        assert bp.stats().waiting == 0
        await client.get(URL)
    assert len(streams) == 2
    assert bp.in_flight == 0


class AsyncCountingTransport(httpx.AsyncBaseTransport):
    """The async CountingTransport: the first wave waits until the window is full."""

    def __init__(self, window: int) -> None:
        self.counter = CountingTransport(window)
        self.full = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        arrival = self.counter.arrived()
        if self.counter.current == self.counter.window:
            self.full.set()
        if arrival <= self.counter.window:
            await self.full.wait()
        await anyio.lowlevel.checkpoint()
        return httpx.Response(200, stream=CountingStream(self.counter))


@pytest.mark.anyio
async def test_many_tasks_sharing_a_client_never_exceed_the_window_at_the_wire() -> None:
    window, tasks, per_task = 4, 32, 10
    bp = make_limiter(window)
    inner = AsyncCountingTransport(window)
    transport = AsyncBackpressureTransport(bp, inner, wait_timeout=30)
    statuses: list[int] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(per_task):
            response = await client.get(URL)
            statuses.append(response.status_code)

    client = httpx.AsyncClient(transport=transport)
    async with client, anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker, client)
    assert statuses == [200] * tasks * per_task
    assert inner.counter.peak == window
    assert inner.counter.current == 0
    assert bp.stats().success == tasks * per_task


@pytest.mark.anyio
async def test_aclose_closes_the_inner_transport() -> None:
    inner = ClosingTransport()
    async with httpx.AsyncClient(transport=AsyncBackpressureTransport(make_limiter(), inner)):
        pass
    assert inner.closed == 1


@pytest.mark.anyio
async def test_an_async_429_passes_retry_after_on() -> None:
    bp = make_limiter(2, maximum=8)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "4"}, stream=TrackedStream())

    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(URL)
    assert bp.stats().dropped == 1
    assert bp.retry_after is not None
    assert 3 < bp.retry_after <= 4


# -- timeouts the caller enforces (anyio / trio deadlines) ---------------------------


def grown_limiter() -> Backpressure:
    bp = make_limiter(2, maximum=16)
    for _ in range(30):  # grow the window first, so that a halving shows
        with bp.slot(), bp.slot():
            pass
    assert bp.window > 4
    return bp


async def stall(request: httpx.Request) -> httpx.Response:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.mark.anyio
async def test_a_caller_deadline_on_the_wire_counts_dropped_and_halves_the_window() -> None:
    bp = grown_limiter()
    grown = bp.window
    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(stall))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await client.get(URL)
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped, stats.ignored) == (0, 1, 0)
    assert bp.window == max(2, grown // 2)


@pytest.mark.anyio
async def test_a_caller_deadline_while_reading_the_body_counts_dropped() -> None:
    bp = make_limiter(1)
    stream = StallingStream(anyio.Event())
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    async with httpx.AsyncClient(transport=AsyncBackpressureTransport(bp, inner)) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.get(URL)
    assert scope.cancelled_caught
    assert stream.closed_fully
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped, stats.ignored, stats.success) == (0, 1, 0, 0)


@pytest.mark.anyio
async def test_a_plain_cancel_under_a_deadline_not_yet_passed_counts_ignored() -> None:
    bp = make_limiter(1)
    on_the_wire = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        on_the_wire.set()
        return await stall(request)

    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(60):  # a deadline that has not passed
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, URL)
                await on_the_wire.wait()
                tg.cancel_scope.cancel()
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped, stats.ignored) == (0, 0, 1)


@pytest.mark.anyio
async def test_a_plain_cancel_while_reading_the_body_under_a_deadline_counts_ignored() -> None:
    bp = make_limiter(1)
    started = anyio.Event()
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=StallingStream(started)))
    async with httpx.AsyncClient(transport=AsyncBackpressureTransport(bp, inner)) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, URL)
                await started.wait()
                tg.cancel_scope.cancel()
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped, stats.ignored) == (0, 0, 1)


# -- admission details -------------------------------------------------------------


def test_the_transports_own_wait_is_not_validated_again_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import backpressure_client._transport as transport_module

    bp = make_limiter(1)
    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    client = httpx.Client(transport=BackpressureTransport(bp, inner, wait_timeout=1.0))
    checked: list[object] = []
    real = transport_module._wait_seconds

    def counting(value: object, what: str) -> float:
        checked.append(value)
        return real(value, what)

    monkeypatch.setattr(transport_module, "_wait_seconds", counting)
    with client:
        client.get(URL)
        assert checked == []
        client.get(URL, extensions={"backpressure_timeout": 0.5})
        assert checked == [0.5]  # a request's own value still is
    assert bp.stats().success == 2


def test_the_transports_keep_no_ineffective_slots() -> None:
    # httpx's base classes give every instance a __dict__: __slots__ would only mislead.
    for cls in (BackpressureTransport, AsyncBackpressureTransport):
        assert all("__slots__" not in vars(base) for base in cls.__mro__[:-1]), cls
