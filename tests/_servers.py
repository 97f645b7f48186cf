"""A real HTTP server on 127.0.0.1 for end-to-end tests (stdlib only).

Routes:

``/ok``
    200 with a short body.
``/work``
    200 after counting itself among the requests being handled.  While
    ``hold_until`` is set to *n*, the first requests wait until *n* of them
    are handled at once (proving that the client reached its window).
``/status/<code>``
    that status; ``?retry_after=<value>`` adds a ``Retry-After`` header.
``/stream``
    200 with a chunked body: the first chunk at once, the rest once the
    test sets ``stream_gate``.
``/stall``
    never answers until ``stall_gate`` is set (for client timeouts).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class ServerState:
    """What the server saw, shared by its handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.current = 0
        self.peak = 0
        self.hold_until = 0
        self.full = threading.Event()
        self.stream_gate = threading.Event()
        self.stall_gate = threading.Event()

    def enter(self, path: str) -> int:
        with self.lock:
            self.requests.append(path)
            self.current += 1
            self.peak = max(self.peak, self.current)
            if self.hold_until and self.current >= self.hold_until:
                self.full.set()
            return len(self.requests)

    def leave(self) -> None:
        with self.lock:
            self.current -= 1

    def release_all(self) -> None:
        self.full.set()
        self.stream_gate.set()
        self.stall_gate.set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        arrival = state.enter(url.path)
        try:
            if url.path == "/ok":
                self._reply(200, b"ok")
            elif url.path == "/work":
                if arrival <= state.hold_until:
                    state.full.wait(10)
                self._reply(200, b"done")
            elif url.path.startswith("/status/"):
                code = int(url.path.rsplit("/", 1)[1])
                query = parse_qs(url.query)
                headers = {}
                if "retry_after" in query:
                    headers["Retry-After"] = query["retry_after"][0]
                self._reply(code, b"status", headers)
            elif url.path == "/stream":
                self._stream()
            elif url.path == "/stall":
                state.stall_gate.wait(10)
                self._reply(200, b"late")
            else:
                self._reply(404, b"no such route")
        finally:
            state.leave()

    def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(b"first;")
        self.wfile.flush()
        self.server.state.stream_gate.wait(10)
        self._chunk(b"rest")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@contextmanager
def http_server() -> Iterator[tuple[str, ServerState]]:
    """Serve on 127.0.0.1, on a free port, in a background thread.

    Yields the base URL and the server's state.
    """
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = ServerState()
    thread = threading.Thread(
        target=server.serve_forever, args=(0.01,), name="e2e-http-server", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}", server.state
    finally:
        server.state.release_all()
        server.shutdown()
        server.server_close()
        thread.join(5)
