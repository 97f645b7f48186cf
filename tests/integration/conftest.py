"""Real servers for the integration tests: a Prometheus process and a backend.

The Prometheus fixtures need the ``prometheus`` binary (Debian package
``prometheus``; ``BACKPRESSURE_PROMETHEUS_BINARY`` may name another path).
Without it those tests skip, saying so, unless
``BACKPRESSURE_REQUIRE_PROMETHEUS=1`` (set by ``.ci/run``), which turns the
skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from _stub_servers import MetricsBackend

from backpressure_client._promserver import PrometheusServer as PrometheusProcess

REQUIRE_ENV = "BACKPRESSURE_REQUIRE_PROMETHEUS"
BINARY_ENV = "BACKPRESSURE_PROMETHEUS_BINARY"  # a path, to use another binary


def _find_prometheus() -> str | None:
    configured = os.environ.get(BINARY_ENV)
    if configured is not None:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("prometheus")
    if found:
        return found
    if os.access("/usr/bin/prometheus", os.X_OK):
        return "/usr/bin/prometheus"
    return None


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    binary = _find_prometheus()
    if binary is None:
        reason = (
            "the prometheus binary is not installed "
            "(Debian: apt-get install prometheus; .ci/run installs it)"
        )
        if BINARY_ENV in os.environ:
            reason = f"{BINARY_ENV}={os.environ[BINARY_ENV]!r} is not an executable"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def backend() -> Iterator[MetricsBackend]:
    """One backend for the session; each test uses its own ``case`` label."""
    with MetricsBackend(work_seconds=0.1) as server:
        yield server


def _prometheus(binary: str, workdir: Path, backend: MetricsBackend) -> Iterator[PrometheusProcess]:
    server = PrometheusProcess(binary, workdir, [f"127.0.0.1:{backend.port}"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus(
    prometheus_binary: str, backend: MetricsBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    """A Prometheus shared by the tests that do not stop it."""
    yield from _prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"), backend)


@pytest.fixture
def own_prometheus(
    prometheus_binary: str, backend: MetricsBackend, tmp_path: Path
) -> Iterator[PrometheusProcess]:
    """A Prometheus for one test, which may kill and restart it."""
    yield from _prometheus(prometheus_binary, tmp_path, backend)
