"""The httpx face: a client that backs off when its server answers 429.

Run:  python examples/transport/example.py

A small server on 127.0.0.1 works on at most 4 requests at once and answers
``429 Too Many Requests`` with ``Retry-After: 1`` beyond that.  Twelve threads
share one ``httpx.Client`` whose transport is a ``BackpressureTransport``:
each 429 halves the window at once, rejected requests never reach the server,
and tenacity retries them after the hinted delay.  Then the same with
``httpx.AsyncClient`` and ``AsyncBackpressureTransport`` on asyncio.
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import tenacity

from backpressure_client import (
    AsyncBackpressureTransport,
    Backpressure,
    BackpressureConfig,
    BackpressureTransport,
    retry_if_backpressure,
    wait_backpressure,
)

CAPACITY = 4  # requests the server works on at once


class Server:
    """Answers GET /work in 20 ms, or 429 when CAPACITY requests are in progress."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.working = self.peak = self.served = self.too_many = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                with server.lock:
                    busy = server.working >= CAPACITY
                    if busy:
                        server.too_many += 1
                    else:
                        server.working += 1
                        server.peak = max(server.peak, server.working)
                if busy:
                    self.reply(429, b"slow down", {"Retry-After": "1"})
                    return
                time.sleep(0.02)  # the work
                with server.lock:
                    server.working -= 1
                    server.served += 1
                self.reply(200, b"done", {})

            def reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def main() -> None:
    server = Server()
    config = BackpressureConfig(congestion_window_min=1, congestion_window_max=16)
    limiter = Backpressure(config, name="example-transport", registry=None)

    # Rejected locally (window full): retried after the server's hint, or a short backoff.
    retrying = tenacity.Retrying(
        retry=retry_if_backpressure(),
        wait=wait_backpressure(max_wait=2.0),
        stop=tenacity.stop_after_attempt(20),
        reraise=True,
    )
    statuses: dict[int, int] = {}
    statuses_lock = threading.Lock()

    def caller(client: httpx.Client) -> None:
        for _ in range(10):
            response = retrying(client.get, "/work")
            with statuses_lock:
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    transport = BackpressureTransport(limiter)  # inner: httpx.HTTPTransport()
    started = time.monotonic()
    with httpx.Client(transport=transport, base_url=server.url) as client:
        threads = [threading.Thread(target=caller, args=(client,)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    stats = limiter.stats()
    print(f"sync:  {time.monotonic() - started:.1f} s, responses by status {statuses}")
    print(
        f"       server: {server.served} served, {server.too_many} answered 429, "
        f"at most {server.peak} at once (capacity {CAPACITY})"
    )
    print(
        f"       limiter: window {stats.window}, {stats.success} success, "
        f"{stats.dropped} dropped (429), {stats.rejected} rejected locally, "
        f"mean latency {stats.latency_seconds / stats.latency_count * 1000:.0f} ms"
    )
    asyncio.run(async_main(server))


async def async_main(server: Server) -> None:
    config = BackpressureConfig(congestion_window_min=1, congestion_window_max=16)
    limiter = Backpressure(config, name="example-async", registry=None)
    # Wait up to 5 s for a slot instead of failing; one request overrides it.
    transport = AsyncBackpressureTransport(limiter, wait_timeout=5.0)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        responses = await asyncio.gather(*(client.get("/work") for _ in range(60)))
        urgent = await client.get("/work", extensions={"backpressure_timeout": 0})
    codes = [r.status_code for r in responses]
    stats = limiter.stats()
    print(
        f"async: 60 requests, {codes.count(200)} ok, {codes.count(429)} answered 429; "
        f"urgent request: {urgent.status_code}; window {stats.window}, "
        f"{stats.wait_seconds:.1f} s of waiting for slots (all tasks together)"
    )


if __name__ == "__main__":
    main()
