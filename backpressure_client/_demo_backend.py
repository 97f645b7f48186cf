"""A small protected service for the demo: limited capacity, honest overload.

It serves ``GET /work`` on 127.0.0.1.  At most ``capacity`` requests are worked
on at once, each for ``latency`` seconds; further requests wait in a queue, so
their latency grows with it; a request that finds ``queue_limit`` others
waiting is answered ``503`` at once.  ``GET /metrics`` exposes what
backpressure signals read (prometheus_client text format):

``demo_backend_in_flight``           requests being worked on
``demo_backend_queue_depth``         requests waiting for a worker
``demo_backend_requests_total``      answered requests, by ``code``
``demo_backend_saturation``          (in flight + queued) / capacity

It runs in a daemon thread and stops with :meth:`DemoBackend.close`.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["DemoBackend"]


class DemoBackend:
    """A capacity-limited HTTP service on 127.0.0.1.

    :param capacity: requests worked on at once.
    :param latency: seconds of work per request.
    :param queue_limit: waiting requests beyond which new ones get ``503``.
    :param port: the port to bind; 0 picks a free one.
    """

    def __init__(
        self, capacity: int = 8, latency: float = 0.05, queue_limit: int = 16, port: int = 0
    ) -> None:
        if capacity < 1 or latency < 0 or queue_limit < 0:
            raise ValueError(
                f"capacity={capacity!r} must be >= 1, latency={latency!r} and "
                f"queue_limit={queue_limit!r} must be >= 0"
            )
        self.latency = latency
        self.queue_limit = queue_limit
        self._capacity = capacity
        self._lock = threading.Lock()
        self._workers = threading.Semaphore(capacity)
        self._waiting = 0
        self._working = 0
        self.registry = CollectorRegistry()
        self._in_flight = Gauge(
            "demo_backend_in_flight", "Requests being worked on.", registry=self.registry
        )
        self._queue = Gauge(
            "demo_backend_queue_depth", "Requests waiting for a worker.", registry=self.registry
        )
        self._saturation = Gauge(
            "demo_backend_saturation",
            "(in flight + queued) / capacity.",
            registry=self.registry,
        )
        self._answered = Counter(
            "demo_backend_requests",
            "Answered requests, by status code.",
            ["code"],
            registry=self.registry,
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def capacity(self) -> int:
        """Requests worked on at once."""
        return self._capacity

    def _update_gauges_locked(self) -> None:
        self._in_flight.set(self._working)
        self._queue.set(self._waiting)
        self._saturation.set((self._working + self._waiting) / self._capacity)

    def _work(self) -> int:
        with self._lock:
            if self._waiting >= self.queue_limit and self._working >= self._capacity:
                self._answered.labels("503").inc()
                return 503
            self._waiting += 1
            self._update_gauges_locked()
        self._workers.acquire()
        with self._lock:
            self._waiting -= 1
            self._working += 1
            self._update_gauges_locked()
        try:
            time.sleep(self.latency)  # the work itself
        finally:
            with self._lock:
                self._working -= 1
                self._update_gauges_locked()
            self._workers.release()
        self._answered.labels("200").inc()
        return 200

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = generate_latest(backend.registry)
                    self._reply(200, body, "text/plain; version=0.0.4")
                elif self.path.startswith("/work"):
                    code = backend._work()
                    self._reply(code, b"ok\n" if code == 200 else b"overloaded\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if code == 503:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the demo prints its own progress

        return Handler

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)

    def __enter__(self) -> DemoBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
