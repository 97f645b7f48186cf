"""Run a local ``prometheus`` server: for the demo and the integration tests.

:class:`PrometheusServer` starts the Debian/upstream ``prometheus`` binary on
127.0.0.1 with its own configuration and data directory, scraping the given
targets, and stops it again.  It is not part of the limiter: nothing in the
library needs a Prometheus of its own.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["PrometheusServer", "find_prometheus", "free_port"]


def find_prometheus() -> str | None:
    """The path of the ``prometheus`` binary on ``PATH``, or ``None``."""
    return shutil.which("prometheus")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """A ``prometheus`` process on 127.0.0.1.

    :param binary: the ``prometheus`` executable.
    :param workdir: a directory for its configuration, data and log.
    :param targets: ``host:port`` pairs to scrape (path ``/metrics``).
    :param scrape_interval: seconds between scrapes.

    :meth:`kill` then :meth:`start` simulate an outage: it comes back on the
    same port with the same data.
    """

    def __init__(
        self, binary: str, workdir: Path, targets: list[str], scrape_interval: float = 1.0
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.data = workdir / "data"
        self.log = workdir / "prometheus.log"
        quoted = ", ".join(f'"{t}"' for t in targets)
        timeout_ms = int(scrape_interval * 900)
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval:g}s\n"
            f"  scrape_timeout: {timeout_ms}ms\n"
            "scrape_configs:\n"
            "  - job_name: backend\n"
            "    static_configs:\n"
            f"      - targets: [{quoted}]\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait up to *timeout* seconds until it is ready.

        :raises RuntimeError: it exited or was not ready in time (with its log's tail).
        """
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"prometheus exited with {self.process.returncode}:\n{self.tail()}"
                    )
                try:
                    if client.get(self.url + "/-/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """End the process at once (SIGKILL): an outage, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def query(self, promql: str) -> list[dict[str, object]]:
        """Run an instant query and return its ``data.result``."""
        with httpx.Client(timeout=2.0) as client:
            answer = client.get(self.url + "/api/v1/query", params={"query": promql}).json()
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def tail(self, lines: int = 20) -> str:
        """The last *lines* lines of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
