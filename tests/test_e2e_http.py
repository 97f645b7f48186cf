"""End to end: real httpx clients, the default inner transports, a real server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest
from _servers import ServerState, http_server

from backpressure_client import Backpressure, BackpressureConfig, BackpressureError
from backpressure_client._transport import AsyncBackpressureTransport, BackpressureTransport

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with http_server() as served:
        yield served


def make_limiter(window: int, maximum: int | None = None) -> Backpressure:
    config = BackpressureConfig(
        congestion_window_min=window, congestion_window_max=maximum or window
    )
    return Backpressure(config, registry=None)


def test_a_request_goes_through_and_gives_its_slot_back(server: tuple[str, ServerState]) -> None:
    base, state = server
    bp = make_limiter(2)
    with httpx.Client(transport=BackpressureTransport(bp), base_url=base) as client:
        response = client.get("/ok")
    assert (response.status_code, response.text) == (200, "ok")
    assert state.requests == ["/ok"]
    stats = bp.stats()
    assert (stats.in_flight, stats.success, stats.latency_count) == (0, 1, 1)


def test_threads_sharing_a_client_never_exceed_the_window_at_the_server(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    window, threads, per_thread = 3, 8, 10
    state.hold_until = window  # the first requests wait until 3 are handled at once
    bp = make_limiter(window)
    statuses: list[int] = []
    transport = BackpressureTransport(bp, wait_timeout=30)
    with httpx.Client(transport=transport, base_url=base) as client:

        def worker() -> None:
            statuses.extend(client.get("/work").status_code for _ in range(per_thread))

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(30)
    assert statuses == [200] * threads * per_thread
    assert state.peak == window
    assert bp.stats().in_flight == 0


def test_a_429_with_retry_after_shrinks_the_window_and_hints_rejections(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    bp = make_limiter(2, maximum=8)
    with httpx.Client(transport=BackpressureTransport(bp), base_url=base) as client:
        for _ in range(6):  # grow the window on successes (to 5)
            with client.stream("GET", "/ok"), client.stream("GET", "/ok"):
                pass
        grown = bp.window
        assert grown > 2
        response = client.get("/status/429", params={"retry_after": "30"})
        assert response.status_code == 429
        assert bp.window == grown // 2
        held = [bp.try_acquire() for _ in range(bp.window)]
        before = len(state.requests)
        with pytest.raises(BackpressureError) as caught:
            client.get("/ok")
        assert len(state.requests) == before  # nothing reached the server
        assert caught.value.retry_after is not None
        assert 25 < caught.value.retry_after <= 30
        for permit in held:
            permit.release()


def test_a_streamed_body_holds_the_slot_until_the_block_exits(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    bp = make_limiter(1)
    with httpx.Client(transport=BackpressureTransport(bp), base_url=base) as client:
        with client.stream("GET", "/stream") as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"first;"
            assert bp.in_flight == 1
            with pytest.raises(BackpressureError):
                client.get("/ok")
            assert state.requests == ["/stream"]
            state.stream_gate.set()
            assert b"".join(chunks) == b"rest"
        assert bp.in_flight == 0
        assert client.get("/ok").status_code == 200
    assert bp.stats().success == 2


def test_a_client_timeout_is_a_dropped_request(server: tuple[str, ServerState]) -> None:
    base, _ = server
    bp = make_limiter(2, maximum=8)
    transport = BackpressureTransport(bp)
    with (
        httpx.Client(transport=transport, base_url=base) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get("/stall", timeout=0.2)
    stats = bp.stats()
    assert (stats.in_flight, stats.dropped) == (0, 1)


def test_a_refused_connection_is_an_ignored_request() -> None:
    with http_server() as (base, _):
        pass  # the port is closed again: connections are refused
    bp = make_limiter(2)
    transport = BackpressureTransport(bp)
    with (
        httpx.Client(transport=transport, base_url=base) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get("/ok")
    stats = bp.stats()
    assert (stats.in_flight, stats.ignored) == (0, 1)


@pytest.mark.anyio
async def test_async_tasks_sharing_a_client_never_exceed_the_window_at_the_server(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    window, tasks, per_task = 3, 12, 5
    state.hold_until = window
    bp = make_limiter(window)
    statuses: list[int] = []
    transport = AsyncBackpressureTransport(bp, wait_timeout=30)
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:

        async def worker() -> None:
            for _ in range(per_task):
                response = await client.get("/work")
                statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
    assert statuses == [200] * tasks * per_task
    assert state.peak == window
    assert bp.stats().in_flight == 0


@pytest.mark.anyio
async def test_async_a_task_cancelled_mid_body_gives_its_slot_back(
    server: tuple[str, ServerState],
) -> None:
    base, _ = server
    bp = make_limiter(1)
    first_chunk = anyio.Event()
    async with httpx.AsyncClient(transport=AsyncBackpressureTransport(bp), base_url=base) as client:

        async def read() -> None:
            async with client.stream("GET", "/stream") as response:
                async for _chunk in response.aiter_raw():
                    first_chunk.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await first_chunk.wait()
            assert bp.in_flight == 1
            tg.cancel_scope.cancel()
        assert bp.in_flight == 0
        assert (await client.get("/ok")).status_code == 200
    stats = bp.stats()
    assert (stats.ignored, stats.success) == (1, 1)
