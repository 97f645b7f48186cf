"""A client that backs off when Prometheus says its backend is overloaded.

Run:  python examples/http/run_example.py            (about 40 s)
      python examples/http/run_example.py --keep     (then browse Prometheus; Ctrl-C ends)

It starts, all on 127.0.0.1:

* a backend that serves ``GET /work`` and exposes ``example_backend_in_flight``;
* the client's own metrics endpoint (``backpressure_client_*``);
* a real Prometheus (the ``prometheus`` binary) scraping both every second;

then sends load through ``httpx.Client(transport=BackpressureTransport(limiter))``
in three phases (calm, overload, calm) and prints one line per second.
See README.md beside this file for what to watch.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

from backpressure_client import (
    Backpressure,
    BackpressureConfig,
    BackpressureError,
    BackpressureTransport,
)

CAPACITY = 8  # requests the backend works on at once without slowing down


class Backend:
    """A service that slows down when more than CAPACITY requests are in flight."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.in_flight = 0
        self.lock = threading.Lock()
        gauge = Gauge("example_backend_in_flight", "Requests in flight.", registry=self.registry)
        gauge.set_function(lambda: float(self.in_flight))
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype = generate_latest(backend.registry), "text/plain; version=0.0.4"
                else:
                    with backend.lock:
                        backend.in_flight += 1
                        load = backend.in_flight
                    # 50 ms of work, longer and longer past the capacity.
                    time.sleep(0.05 * max(1.0, load / CAPACITY) ** 2)
                    with backend.lock:
                        backend.in_flight -= 1
                    body, ctype = b"ok\n", "text/plain"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prometheus(
    binary: str, workdir: Path, targets: list[str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n"
        "  - job_name: example\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready(url):
            return process, url
        time.sleep(0.1)
    process.kill()
    sys.exit("prometheus did not start within 30 s")


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


class Callers:
    """*n* threads calling the backend through one client until told to stop."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client, self.url = client, url
        self.ok = self.rejected = 0
        self.lock = threading.Lock()
        self.threads: list[tuple[threading.Thread, threading.Event]] = []

    def resize(self, n: int) -> None:
        while len(self.threads) > n:
            thread, stop = self.threads.pop()
            stop.set()
            thread.join()
        while len(self.threads) < n:
            stop = threading.Event()
            thread = threading.Thread(target=self._call, args=(stop,), daemon=True)
            thread.start()
            self.threads.append((thread, stop))

    def _call(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._call_once():
                stop.wait(0.05)  # a real caller would shed, queue or retry later

    def _call_once(self) -> bool:
        try:
            self.client.get(self.url)
        except BackpressureError:
            with self.lock:
                self.rejected += 1
            return False
        with self.lock:
            self.ok += 1
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the phase lengths")
    parser.add_argument("--keep", action="store_true", help="keep everything running at the end")
    args = parser.parse_args()
    if not Path(args.prometheus).exists():
        sys.exit("needs the prometheus binary (Debian: apt-get install prometheus) or --prometheus")

    backend = Backend()
    registry = CollectorRegistry()
    metrics_port = free_port()
    metrics_server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    workdir = Path(tempfile.mkdtemp(prefix="backpressure-example-"))
    targets = [f"127.0.0.1:{backend.port}", f"127.0.0.1:{metrics_port}"]
    prometheus, prom_url = start_prometheus(args.prometheus, workdir, targets)
    print(f"backend     http://127.0.0.1:{backend.port}/metrics")
    print(f"client      http://127.0.0.1:{metrics_port}/metrics")
    print(f"prometheus  {prom_url}")

    config = BackpressureConfig(
        # The seed's form of the URL works as well as the base URL.
        backpressure_monitoring_url=prom_url + "/api/v1/query",
        backpressure_queries=[f"example_backend_in_flight > {CAPACITY}"],
        monitoring_cadence=1.0,  # seconds; 60 by default
        congestion_window_min=2,
        congestion_window_max=40,
    )
    limiter = Backpressure(config, name="example", registry=registry)
    phases = [("calm", 4, 8), ("overload", 24, 16), ("calm again", 4, 12)]
    try:
        with limiter, httpx.Client(transport=BackpressureTransport(limiter)) as client:
            callers = Callers(client, f"http://127.0.0.1:{backend.port}/work")
            print(
                f"{'t':>3}  {'phase':<10} {'callers':>7} {'window':>6} {'in flight':>9} "
                f"{'ok/s':>5} {'rejected/s':>10}  firing"
            )
            t = 0
            for phase, n, seconds in phases:
                callers.resize(n)
                for _ in range(round(seconds * args.scale)):
                    ok, rejected = callers.ok, callers.rejected
                    time.sleep(1)
                    t += 1
                    print(
                        f"{t:>3}  {phase:<10} {n:>7} {limiter.window:>6} "
                        f"{backend.in_flight:>9} {callers.ok - ok:>5} "
                        f"{callers.rejected - rejected:>10}  {', '.join(limiter.firing) or '-'}"
                    )
            callers.resize(0)
            if args.keep:
                print(
                    f"running; browse {prom_url}/graph?g0.expr=backpressure_client_window "
                    "(Ctrl-C ends)"
                )
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        metrics_server.shutdown()
        metrics_server.server_close()
        backend.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
