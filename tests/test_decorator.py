"""The @limit decorator: sync and async functions, methods, outcomes, waiting."""

from __future__ import annotations

import inspect
import threading
import time
import typing
from collections.abc import Callable

import anyio
import httpx
import pytest

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    ManualClock,
    Outcome,
    WaitTimeoutError,
)
from backpressure_client._decorator import limit, resolve_classifier


def make_limiter(window: int = 2, *, maximum: int | None = None, **kwargs: object) -> Backpressure:
    config = BackpressureConfig(
        congestion_window_min=window,
        congestion_window_max=maximum or window,
        **kwargs,  # type: ignore[arg-type]
    )
    return Backpressure(config, registry=None)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


# -- sync ------------------------------------------------------------------------


def test_a_call_holds_a_slot_while_it_runs() -> None:
    bp = make_limiter()
    seen: list[int] = []

    @limit(bp)
    def call(x: int) -> int:
        seen.append(bp.in_flight)
        return x * 2

    assert call(21) == 42
    assert seen == [1]
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.latency_count) == (0, 1, 1)


def test_a_rejected_call_does_not_run() -> None:
    bp = make_limiter(1)
    runs: list[int] = []

    @limit(bp)
    def call() -> None:
        runs.append(1)

    with bp.slot(), pytest.raises(BackpressureError) as caught:
        call()
    assert type(caught.value) is BackpressureError
    assert runs == []
    call()
    assert runs == [1]


def test_a_call_with_wait_timeout_waits_for_a_slot() -> None:
    bp = make_limiter(1)
    results: list[str] = []

    @limit(bp, wait_timeout=10)
    def call() -> str:
        return "done"

    with bp.slot():
        thread = threading.Thread(target=lambda: results.append(call()))
        thread.start()
        wait_until(lambda: bp.stats().waiting == 1)
        assert results == []
    thread.join(5)
    assert results == ["done"]


def test_a_wait_that_times_out_raises_wait_timeout_error() -> None:
    bp = make_limiter(1)

    @limit(bp, wait_timeout=0.01)
    def call() -> None:
        raise AssertionError("must not run")

    with bp.slot(), pytest.raises(WaitTimeoutError):
        call()


def test_the_limiters_configured_wait_is_the_default() -> None:
    bp = make_limiter(1, wait_timeout=0.01)

    @limit(bp)
    def call() -> None:
        raise AssertionError("must not run")

    with bp.slot(), pytest.raises(WaitTimeoutError):
        call()


def test_latency_is_measured_with_the_limiters_clock() -> None:
    clock = ManualClock()
    bp = Backpressure(BackpressureConfig(), clock=clock, registry=None)

    @limit(bp)
    def call() -> None:
        clock.advance(1.5)

    call()
    assert bp.stats().latency_seconds == pytest.approx(1.5)


# -- outcomes ----------------------------------------------------------------------


def raising(bp: Backpressure, error: BaseException, **kwargs: typing.Any) -> Callable[[], None]:
    @limit(bp, **kwargs)
    def call() -> None:
        raise error

    return call


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (TimeoutError(), Outcome.DROPPED),
        (httpx.ReadTimeout("slow"), Outcome.DROPPED),
        (httpx.ConnectError("refused"), Outcome.IGNORED),
        (ValueError("bug"), Outcome.IGNORED),
        (KeyboardInterrupt(), Outcome.IGNORED),
    ],
)
def test_the_default_exception_outcomes(error: BaseException, outcome: Outcome) -> None:
    bp = make_limiter(2, maximum=8)
    with pytest.raises(type(error)):
        raising(bp, error)()
    stats = bp.stats()
    assert stats.in_flight == 0
    assert getattr(stats, outcome.value) == 1


def test_an_http_status_error_counts_as_its_response_and_passes_retry_after_on() -> None:
    bp = make_limiter(2, maximum=8)
    request = httpx.Request("GET", "http://service.test/")
    response = httpx.Response(429, headers={"Retry-After": "30"}, request=request)
    error = httpx.HTTPStatusError("429", request=request, response=response)
    with pytest.raises(httpx.HTTPStatusError):
        raising(bp, error)()
    assert bp.stats().dropped == 1
    assert bp.retry_after is not None
    assert 29 < bp.retry_after <= 30


def test_a_mapping_of_exception_classes_picks_the_most_specific() -> None:
    bp = make_limiter(2, maximum=8)
    classify = {OSError: Outcome.DROPPED, ConnectionResetError: "ignored"}
    with pytest.raises(ConnectionRefusedError):
        raising(bp, ConnectionRefusedError(), classify=classify)()  # an OSError
    with pytest.raises(ConnectionResetError):
        raising(bp, ConnectionResetError(), classify=classify)()
    with pytest.raises(TimeoutError):  # an OSError, but listed nowhere: MRO finds OSError
        raising(bp, TimeoutError(), classify=classify)()
    with pytest.raises(LookupError):  # not mapped: the default classifier
        raising(bp, LookupError(), classify=classify)()
    stats = bp.stats()
    assert (stats.dropped, stats.ignored) == (2, 2)


def test_a_callable_classifier_decides() -> None:
    bp = make_limiter(2, maximum=8)

    def classify(exc: BaseException) -> Outcome:
        return Outcome.DROPPED if isinstance(exc, LookupError) else Outcome.IGNORED

    with pytest.raises(KeyError):
        raising(bp, KeyError("x"), classify=classify)()
    assert bp.stats().dropped == 1


def test_a_failing_classifier_still_releases_the_slot() -> None:
    bp = make_limiter(1)

    def classify(exc: BaseException) -> Outcome:
        raise RuntimeError("classifier bug")

    with pytest.raises(RuntimeError, match="classifier bug") as caught:
        raising(bp, ValueError("original"), classify=classify)()
    assert isinstance(caught.value.__context__, ValueError)
    assert bp.stats().in_flight == 0
    assert bp.stats().ignored == 1


def test_bad_classify_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="exception class"):
        resolve_classifier({"OSError": Outcome.DROPPED})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="classify\\[OSError\\]"):
        resolve_classifier({OSError: "sometimes"})
    with pytest.raises(TypeError, match="callable"):
        resolve_classifier(42)  # type: ignore[arg-type]


def test_bad_arguments_are_refused() -> None:
    bp = make_limiter()
    with pytest.raises(TypeError, match="Backpressure"):
        limit(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait_timeout"):
        limit(bp, wait_timeout=-1)
    with pytest.raises(TypeError, match="wait_timeout"):
        limit(bp, wait_timeout="1")  # type: ignore[arg-type]


# -- what the decorated function keeps -------------------------------------------


def test_name_docstring_signature_and_hints_are_kept() -> None:
    bp = make_limiter()

    def fetch(url: str, *, retries: int = 3) -> bytes:
        """Fetch *url*."""
        return url.encode()

    decorated = limit(bp)(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__doc__ == "Fetch *url*."
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert typing.get_type_hints(decorated) == typing.get_type_hints(fetch)
    assert decorated("a", retries=1) == b"a"


def test_methods_classmethods_and_staticmethods() -> None:
    bp = make_limiter()

    class Client:
        def __init__(self) -> None:
            self.base = "http://service.test"

        @limit(bp)
        def url(self, path: str) -> str:
            return self.base + path

        @classmethod
        @limit(bp)
        def name(cls) -> str:
            return cls.__name__

        @staticmethod
        @limit(bp)
        def double(x: int) -> int:
            return 2 * x

    client = Client()
    assert client.url("/a") == "http://service.test/a"
    assert Client.name() == "Client"
    assert client.double(4) == 8
    assert bp.stats().success == 3


def test_generator_functions_are_refused() -> None:
    bp = make_limiter()

    def numbers() -> typing.Iterator[int]:
        yield 1

    async def anumbers() -> typing.AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        limit(bp)(numbers)
    with pytest.raises(TypeError, match="generator"):
        limit(bp)(anumbers)


def test_a_classmethod_object_above_is_refused_with_a_hint() -> None:
    bp = make_limiter()
    with pytest.raises(TypeError, match="below @classmethod"):
        limit(bp)(classmethod(lambda cls: None))  # type: ignore[arg-type]


# -- async -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_async_call_holds_a_slot_until_it_finishes() -> None:
    bp = make_limiter()
    seen: list[int] = []

    @limit(bp)
    async def call(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        seen.append(bp.in_flight)
        return x + 1

    assert inspect.iscoroutinefunction(call)
    assert await call(1) == 2
    assert seen == [1]
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.latency_count) == (0, 1, 1)


@pytest.mark.anyio
async def test_an_async_rejection_and_an_async_wait() -> None:
    bp = make_limiter(1)
    runs: list[str] = []

    @limit(bp)
    async def impatient() -> None:
        runs.append("impatient")

    @limit(bp, wait_timeout=10)
    async def patient() -> None:
        runs.append("patient")

    async with anyio.create_task_group() as tg, bp.slot():
        with pytest.raises(BackpressureError):
            await impatient()
        tg.start_soon(patient)
        await anyio.wait_all_tasks_blocked()
        assert bp.stats().waiting == 1
        assert runs == []
    assert runs == ["patient"]


@pytest.mark.anyio
async def test_an_async_wait_that_times_out() -> None:
    bp = make_limiter(1)

    @limit(bp, wait_timeout=0.01)
    async def call() -> None:
        raise AssertionError("must not run")

    async with bp.slot():
        with pytest.raises(WaitTimeoutError):
            await call()


@pytest.mark.anyio
async def test_a_cancelled_async_call_releases_its_slot_as_ignored() -> None:
    bp = make_limiter(1)
    started = anyio.Event()

    @limit(bp)
    async def call() -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        assert bp.in_flight == 1
        tg.cancel_scope.cancel()
    stats = bp.stats()
    assert (stats.in_flight, stats.ignored, stats.dropped) == (0, 1, 0)


@pytest.mark.anyio
async def test_async_exceptions_are_classified() -> None:
    bp = make_limiter(2, maximum=8)

    @limit(bp, classify={LookupError: Outcome.DROPPED})
    async def call() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await call()
    assert bp.stats().dropped == 1


@pytest.mark.anyio
async def test_async_methods_and_async_callable_objects() -> None:
    bp = make_limiter()

    class Service:
        @limit(bp)
        async def get(self, key: str) -> str:
            return key.upper()

    class Handler:
        async def __call__(self, x: int) -> int:
            return x * 3

    assert await Service().get("a") == "A"
    handler = limit(bp)(Handler())
    assert inspect.iscoroutinefunction(handler)
    assert await handler(2) == 6
    assert bp.stats().success == 2


@pytest.mark.anyio
async def test_an_async_call_cut_by_the_callers_deadline_counts_dropped() -> None:
    bp = make_limiter(2, maximum=16)
    for _ in range(30):  # grow the window first, so that a halving shows
        with bp.slot(), bp.slot():
            pass
    grown = bp.window
    assert grown > 4

    @limit(bp)
    async def call() -> None:
        await anyio.sleep_forever()

    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await call()
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped, stats.ignored) == (0, 1, 0)
    assert bp.window == max(2, grown // 2)


@pytest.mark.anyio
async def test_a_plain_cancel_under_a_deadline_not_yet_passed_counts_ignored() -> None:
    bp = make_limiter(1)
    started = anyio.Event()

    @limit(bp)
    async def call() -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await started.wait()
            tg.cancel_scope.cancel()
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped, stats.ignored) == (0, 0, 1)


def test_a_sync_wrapper_refuses_a_callable_that_returns_a_coroutine() -> None:
    bp = make_limiter(1)
    ran: list[str] = []

    async def work() -> str:
        ran.append("body")
        return "done"

    def make_work() -> typing.Awaitable[str]:
        # A plain function returning a coroutine: not an `async def`, so taken for sync.
        return work()

    call = limit(bp)(make_work)
    with pytest.raises(TypeError, match="async def"):
        call()
    assert ran == []  # closed, never run (and no "never awaited" warning)
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.ignored) == (0, 0, 1)


def test_a_pre_validated_wait_is_not_validated_again_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import backpressure_client._decorator as decorator_module

    bp = make_limiter(1, wait_timeout=1.0)
    checked: list[object] = []

    def record(*args: object) -> float:
        checked.append(args)
        return 1.0

    monkeypatch.setattr(bp, "_timeout", record)
    monkeypatch.setattr(decorator_module, "_wait_seconds", record)

    @limit(bp)  # the limiter's configured wait: validated by its config
    def call() -> int:
        return 1

    assert call() + call() == 2
    assert checked == []
    assert bp.stats().success == 2
