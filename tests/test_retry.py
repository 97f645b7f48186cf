"""The tenacity helpers: what is retried, how long to wait, sync and async."""

from __future__ import annotations

import random

import httpx
import pytest
import tenacity

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    LimiterStateError,
    ManualClock,
    QueueFullError,
    WaitTimeoutError,
)
from backpressure_client._decorator import limit
from backpressure_client._retry import retry_if_backpressure, wait_backpressure
from backpressure_client._transport import AsyncBackpressureTransport, BackpressureTransport

URL = "http://service.test/item"


def rejection(cls: type[BackpressureError] = BackpressureError, **kw: object) -> BackpressureError:
    return cls(window=1, in_flight=1, **kw)  # type: ignore[arg-type]


def state_after(exc: BaseException | None, attempt: int = 1) -> tenacity.RetryCallState:
    """A RetryCallState whose attempt *attempt* failed with *exc* (or returned)."""
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if exc is None:
        state.set_result("ok")
    else:
        state.set_exception((type(exc), exc, None))
    return state


def status_error(status: int, retry_after: str | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", URL)
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(str(status), request=request, response=response)


# -- the predicate -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (rejection(), True),
        (rejection(WaitTimeoutError), True),
        (rejection(QueueFullError), True),
        (LimiterStateError("closed"), False),
        (httpx.ConnectError("refused"), False),
        (None, False),
    ],
)
def test_retry_if_backpressure(exc: BaseException | None, retried: bool) -> None:
    assert retry_if_backpressure()(state_after(exc)) is retried


def test_retry_if_backpressure_combines_with_other_predicates() -> None:
    either = retry_if_backpressure() | tenacity.retry_if_exception_type(httpx.ConnectError)
    assert either(state_after(httpx.ConnectError("refused")))
    assert either(state_after(rejection()))
    assert not either(state_after(ValueError()))


# -- the wait ----------------------------------------------------------------------


def test_a_retry_after_hint_is_waited_for_with_jitter() -> None:
    wait = wait_backpressure(jitter=0.25, rng=random.Random(7))
    waits = [wait(state_after(rejection(retry_after=4.0))) for _ in range(200)]
    assert all(4.0 <= w <= 5.0 for w in waits)
    assert len(set(waits)) > 100  # spread, not one instant


def test_without_jitter_the_hint_is_exact() -> None:
    wait = wait_backpressure(jitter=0.0)
    assert wait(state_after(rejection(retry_after=2.5))) == 2.5


def test_the_retry_after_header_of_an_http_status_error_is_a_hint() -> None:
    wait = wait_backpressure(jitter=0.0)
    assert wait(state_after(status_error(429, "3"))) == 3.0
    # An unreadable header, or none: the exponential fallback.
    assert wait(state_after(status_error(429, "soon"))) == 0.1
    assert wait(state_after(status_error(503))) == 0.1


def test_without_a_hint_the_wait_backs_off_exponentially() -> None:
    wait = wait_backpressure(initial=0.5, exp_base=2, jitter=0.0, max_wait=10)
    waits = [wait(state_after(rejection(), attempt=n)) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert wait(state_after(rejection(), attempt=10_000)) == 10.0  # no overflow


def test_the_exponential_wait_is_jittered() -> None:
    wait = wait_backpressure(initial=1.0, jitter=0.5, rng=random.Random(1))
    waits = [wait(state_after(rejection(), attempt=3)) for _ in range(100)]
    assert all(4.0 <= w <= 6.0 for w in waits)
    assert len(set(waits)) > 50


def test_max_wait_caps_a_hint_too() -> None:
    wait = wait_backpressure(max_wait=5.0, jitter=0.0)
    assert wait(state_after(rejection(retry_after=120.0))) == 5.0


def test_a_fallback_strategy_replaces_the_exponential_one() -> None:
    wait = wait_backpressure(fallback=tenacity.wait_fixed(0.75), jitter=0.0)
    assert wait(state_after(rejection())) == 0.75
    assert wait(state_after(rejection(retry_after=2.0))) == 2.0  # the hint still wins


def test_bad_parameters_are_refused_all_at_once() -> None:
    with pytest.raises(ValueError, match=r"initial=0.*exp_base=0\.5.*jitter=2.*max_wait=-1"):
        wait_backpressure(initial=0, exp_base=0.5, jitter=2, max_wait=-1)
    assert "jitter=0.2" in repr(wait_backpressure())


# -- with tenacity, sync --------------------------------------------------------------


def test_a_decorated_call_is_retried_after_the_hinted_delay() -> None:
    clock = ManualClock()
    bp = Backpressure(
        BackpressureConfig(congestion_window_min=1, congestion_window_max=1),
        clock=clock,
        registry=None,
    )
    bp.set_retry_after(3.0)
    held = bp.try_acquire()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(sleeps) == 2:
            held.release()  # the slot frees up while the second wait runs

    @tenacity.retry(
        retry=retry_if_backpressure(),
        wait=wait_backpressure(jitter=0.0),
        stop=tenacity.stop_after_attempt(5),
        sleep=sleep,
        reraise=True,
    )
    @limit(bp)
    def call() -> str:
        return "done"

    assert call() == "done"
    # The first wait honours the hint; it has passed by the second: backoff.
    assert sleeps == [3.0, 0.2]


def test_a_transport_rejection_is_retried_until_the_attempts_run_out() -> None:
    bp = Backpressure(
        BackpressureConfig(congestion_window_min=1, congestion_window_max=1), registry=None
    )
    held = bp.try_acquire()
    sleeps: list[float] = []
    retrying = tenacity.Retrying(
        retry=retry_if_backpressure(),
        wait=wait_backpressure(jitter=0.0),
        stop=tenacity.stop_after_attempt(3),
        sleep=sleeps.append,
        reraise=True,
    )
    transport = BackpressureTransport(bp, httpx.MockTransport(lambda r: httpx.Response(200)))
    with httpx.Client(transport=transport) as client, pytest.raises(BackpressureError):
        retrying(client.get, URL)
    assert sleeps == [0.1, 0.2]
    held.release()


# -- with tenacity, async -------------------------------------------------------------


@pytest.mark.anyio
async def test_async_retrying_honours_a_429s_retry_after() -> None:
    bp = Backpressure(
        BackpressureConfig(congestion_window_min=1, congestion_window_max=4), registry=None
    )
    responses = iter(
        [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, text="ok")]
    )
    transport = AsyncBackpressureTransport(bp, httpx.MockTransport(lambda r: next(responses)))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def fetch(client: httpx.AsyncClient) -> str:
        response = await client.get(URL)
        response.raise_for_status()
        return response.text

    retrying = tenacity.AsyncRetrying(
        retry=retry_if_backpressure()
        | tenacity.retry_if_exception(
            lambda e: isinstance(e, httpx.HTTPStatusError) and e.response.status_code in (429, 503)
        ),
        wait=wait_backpressure(jitter=0.0),
        stop=tenacity.stop_after_attempt(3),
        sleep=sleep,
        reraise=True,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert await retrying(fetch, client) == "ok"
    assert sleeps == [2.0]
    stats = bp.stats()
    assert (stats.dropped, stats.success) == (1, 1)
