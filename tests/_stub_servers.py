"""Real local HTTP servers for the signal tests.

prometheus-api-client speaks through requests, which respx cannot intercept,
so the tests serve canned answers from a real socket on 127.0.0.1.

``StubServer``
    Answers every path from a table of canned responses (status, body,
    content type, delay); records the requests it saw.
``MetricsBackend``
    A small service exposing prometheus_client metrics that the test sets
    (``bp_test_value{case=...}``) plus ``GET /work``, which holds a request for
    ``work_seconds`` and exposes the requests in flight
    (``bp_backend_in_flight``) — a backend that load can overload.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vector(*values: str | float, metric: dict[str, str] | None = None) -> bytes:
    """A Prometheus instant-vector answer with one sample per value."""
    result = [
        {"metric": metric or {"instance": f"i{i}"}, "value": [1700000000.0, str(v)]}
        for i, v in enumerate(values)
    ]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


def scalar(value: str | float) -> bytes:
    """A Prometheus scalar answer."""
    return json.dumps(
        {
            "status": "success",
            "data": {"resultType": "scalar", "result": [1700000000.0, str(value)]},
        }
    ).encode()


@dataclass
class Canned:
    """One canned answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    #: seconds between bytes of the body: a server that trickles its answer.
    trickle: float = 0.0


@dataclass
class Seen:
    """One request the stub received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) is expected


class _HTTPBase:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(self, port: int = 0) -> None:
        self._release = threading.Event()  # ends delayed answers at close
        self._server = _Server(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self, "GET")

            def do_POST(self) -> None:
                owner._handle(self, "POST")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def reply(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        trickle: float = 0.0,
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            if not trickle:
                handler.wfile.write(body)
                return
            for i in range(len(body)):
                handler.wfile.write(body[i : i + 1])
                handler.wfile.flush()
                if self._release.wait(trickle):
                    return  # the server is closing
        except OSError:
            pass  # the client gave up

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StubServer(_HTTPBase):
    """Canned answers by path (``/api/v1/query``, ``/metrics``...); 404 elsewhere."""

    def __init__(self) -> None:
        self.routes: dict[str, Canned] = {}
        self.seen: list[Seen] = []
        super().__init__()

    def set(self, path: str, canned: Canned | None = None, **kwargs: Any) -> None:
        self.routes[path] = canned if canned is not None else Canned(**kwargs)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        query = parse_qs(parts.query)
        if method == "POST":
            query.update(parse_qs(body.decode()))
        self.seen.append(Seen(method, parts.path, query, dict(handler.headers.items()), body))
        canned = self.routes.get(parts.path)
        if canned is None:
            self.reply(handler, 404, b"not found\n", "text/plain")
            return
        if canned.delay:
            self._release.wait(canned.delay)
        self.reply(
            handler,
            canned.status,
            canned.body,
            canned.content_type,
            canned.headers,
            trickle=canned.trickle,
        )


class MetricsBackend(_HTTPBase):
    """A service with settable metrics and a ``/work`` endpoint that can be overloaded."""

    def __init__(self, port: int = 0, work_seconds: float = 0.05) -> None:
        self.registry = CollectorRegistry()
        self.value = Gauge(
            "bp_test_value", "A value the test sets.", ["case"], registry=self.registry
        )
        self.work_seconds = work_seconds
        self._lock = threading.Lock()
        self._in_flight = 0
        self.peak_in_flight = 0
        self.in_flight_gauge = Gauge(
            "bp_backend_in_flight", "Requests being worked on.", registry=self.registry
        )
        self.in_flight_gauge.set_function(lambda: float(self._in_flight))
        self.answered = Counter(
            "bp_backend_requests", "Answered /work requests.", registry=self.registry
        )
        self.on_work: Callable[[], None] | None = None
        super().__init__(port)

    def set(self, case: str, value: float) -> None:
        self.value.labels(case).set(value)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(handler.path).path
        if path == "/metrics":
            self.reply(handler, 200, generate_latest(self.registry), "text/plain; version=0.0.4")
        elif path == "/work":
            with self._lock:
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                self._release.wait(self.work_seconds)
            finally:
                with self._lock:
                    self._in_flight -= 1
            self.answered.inc()
            self.reply(handler, 200, b"ok\n", "text/plain")
        else:
            self.reply(handler, 404, b"not found\n", "text/plain")


def wait_for(
    condition: Callable[[], bool], timeout: float, *, interval: float = 0.05, what: str = ""
) -> None:
    """Poll *condition* until it holds; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)
