"""Type-checks the faces: transports, @limit, the batch helpers, tenacity helpers.

mypy --strict reads this file; pytest never runs it.  A ``# type: ignore[...]``
on a line that must *not* type-check fails the run if it starts to (strict
mode reports unused ignores), so the negative cases are checked too.
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any

import httpx
import tenacity

from backpressure_client import (
    AsyncBackpressureTransport,
    Backpressure,
    BackpressureTransport,
    BatchFailure,
    BatchProgress,
    BatchReport,
    Outcome,
    arun_batch,
    classify_http_exception,
    classify_response,
    limit,
    parse_retry_after,
    retry_if_backpressure,
    run_batch,
    wait_backpressure,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # mypy checks as Python 3.10
    from typing_extensions import assert_type

limiter = Backpressure()


# -- transports ------------------------------------------------------------------


def teapots_are_dropped(response: httpx.Response) -> Outcome:
    return Outcome.DROPPED if response.status_code == 418 else classify_response(response)


def transports() -> None:
    sync: httpx.BaseTransport = BackpressureTransport(limiter)
    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    chained = BackpressureTransport(
        limiter,
        BackpressureTransport(limiter, inner),  # wrappers chain
        wait_timeout=1.5,
        classify=teapots_are_dropped,
        classify_error=classify_http_exception,
    )
    async_: httpx.AsyncBaseTransport = AsyncBackpressureTransport(limiter, inner)
    httpx.Client(transport=chained)
    httpx.AsyncClient(transport=async_)
    assert_type(chained.limiter, Backpressure)
    assert_type(parse_retry_after("120"), "float | None")
    BackpressureTransport(limiter, async_)  # type: ignore[arg-type]
    del sync


# -- @limit ------------------------------------------------------------------------


@limit(limiter, wait_timeout=2.0, classify={TimeoutError: Outcome.DROPPED})
def fetch(url: str, *, retries: int = 3) -> bytes:
    return url.encode()


@limit(limiter)
async def afetch(url: str) -> bytes:
    return url.encode()


class Client:
    @limit(limiter, classify=classify_http_exception)
    def get(self, path: str) -> str:
        return path

    @classmethod
    @limit(limiter)
    def build(cls, name: str) -> Client:
        return cls()


async def decorated() -> None:
    assert_type(fetch("a"), bytes)
    assert_type(fetch("a", retries=1), bytes)
    fetch(1)  # type: ignore[arg-type]
    fetch("a", retry=1)  # type: ignore[call-arg]
    pending = assert_type(afetch("a"), Coroutine[Any, Any, bytes])
    assert_type(await pending, bytes)
    assert_type(await afetch("a"), bytes)
    assert_type(Client().get("/x"), str)
    assert_type(Client.build("n"), Client)
    Client().get(2)  # type: ignore[arg-type]


# -- batches -----------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    return x * x


def on_result(item: int, result: int) -> None:
    pass


def on_progress(progress: BatchProgress) -> None:
    assert_type(progress.completed, int)


async def batches() -> None:
    report = run_batch(
        limiter,
        square,
        range(10),
        ordered=True,
        on_result=on_result,
        on_error="collect",
        progress=on_progress,
        wait_timeout=None,
        max_workers=4,
    )
    assert_type(report, BatchReport[int])
    assert_type(report.failures, tuple[BatchFailure[int], ...])
    assert_type(report.failures[0].item, int)
    assert_type(report.elapsed, float)
    assert_type(await arun_batch(limiter, asquare, range(10)), BatchReport[int])
    run_batch(limiter, square, range(3), on_error="ignore")  # type: ignore[arg-type]
    await arun_batch(limiter, square, range(3))  # type: ignore[arg-type]


# -- tenacity ----------------------------------------------------------------------


@tenacity.retry(retry=retry_if_backpressure(), wait=wait_backpressure(max_wait=10.0))
def retried(url: str) -> bytes:
    return fetch(url)


def retries() -> None:
    assert_type(retried("a"), bytes)
    tenacity.AsyncRetrying(
        retry=retry_if_backpressure() | tenacity.retry_if_exception_type(httpx.ConnectError),
        wait=wait_backpressure(fallback=tenacity.wait_fixed(1)),
    )
