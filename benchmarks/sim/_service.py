"""The protected service: C workers, a bounded FIFO queue, and its metrics.

A request that finds a free worker starts at once and holds it for its own
service time (drawn by the caller, lognormal around the base latency).  When
all workers are busy it waits in one FIFO queue, so its latency grows with
the queue ahead of it (``queue / C * L`` seconds of waiting).  When the
queue already holds ``queue_bound`` requests it is answered with ``503`` at
once (a Tomcat-style ``acceptCount``; the default bound is ``C / 2``, the
ratio of Tomcat's ``maxThreads=200`` / ``acceptCount=100``).

The service never learns that a client gave up: a request whose client timed
out is still queued and served, and its worker time is wasted.  Lowering the
number of workers (a capacity drop, for example half the replicas gone) lets
running requests finish but starts no new one until fewer than ``workers``
are busy; raising it starts queued requests at once.

The metrics mirror what a prometheus_client-instrumented HTTP server exposes:
``http_server_requests_total{code}``, the duration histogram
``http_server_request_duration_seconds`` (prometheus_client's default
buckets) and gauges for busy workers and queue depth.  They are recorded on
the server's side, when a response is written.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "DEFAULT_BUCKETS",
    "Admission",
    "Request",
    "Service",
    "ServiceParams",
    "Snapshot",
]

#: prometheus_client's default histogram buckets, in seconds (+Inf implied).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


@dataclass(frozen=True)
class ServiceParams:
    """The protected service.

    :param workers: concurrent requests it serves at full capacity (C).
    :param base_latency: mean service time of one request, in seconds (L).
    :param latency_sigma: sigma of the lognormal service time (0: constant).
    :param queue_ratio: the queue bound as a share of ``workers`` (it scales
        with capacity: fewer replicas, fewer queue slots).
    :param reject_latency: seconds to answer a request with 503 when the
        queue is full.
    :param reject_code: the status of that answer (503 or 429).
    """

    workers: int = 50
    base_latency: float = 0.1
    latency_sigma: float = 0.25
    queue_ratio: float = 0.5
    reject_latency: float = 0.002
    reject_code: int = 503

    def queue_bound(self, workers: int) -> int:
        """The queue bound, in requests, for *workers* workers."""
        return max(0, round(self.queue_ratio * workers))

    @property
    def throughput(self) -> float:
        """Requests per second with every worker busy (C / L)."""
        return self.workers / self.base_latency

    @property
    def log_mu(self) -> float:
        """The lognormal's mu that makes the mean service time ``base_latency``."""
        return math.log(self.base_latency) - self.latency_sigma**2 / 2


class Request:
    """One request that a client sent (admitted by its limiter, if any)."""

    __slots__ = ("answered", "client", "enqueued", "sent", "service_time", "token")

    def __init__(self, client: int, sent: float, service_time: float, token: object) -> None:
        #: index of the client that sent it.
        self.client = client
        #: virtual time it was sent, in seconds.
        self.sent = sent
        #: worker seconds it needs once started.
        self.service_time = service_time
        #: the limiter's permit (or whatever the client's gate handed out).
        self.token = token
        #: the client has its answer (a response or its own timeout).
        self.answered = False
        #: virtual time it reached the service.
        self.enqueued = sent


class Admission(Enum):
    """What the service did with a request on arrival."""

    STARTED = "started"
    QUEUED = "queued"
    REJECTED = "rejected"


#: A scrape of the service's counters: ``(ok, errors, bucket counts..., count)``
#: where the bucket counts are cumulative (``le``) as Prometheus stores them.
Snapshot = tuple[int, ...]


class Service:
    """The service's state: busy workers, its queue and its counters.

    :param params: the service.
    :param buckets: duration histogram bucket bounds, in seconds.
    """

    def __init__(self, params: ServiceParams, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.params = params
        self.workers = params.workers
        self.queue_bound = params.queue_bound(params.workers)
        self.busy = 0
        self.queue: deque[Request] = deque()
        self.buckets = buckets
        #: responses by kind (server side).
        self.ok_total = 0
        self.error_total = 0
        #: per-bucket (not cumulative) counts; the last one is +Inf.
        self._bucket_counts = [0] * (len(buckets) + 1)
        self.duration_count = 0
        self.duration_sum = 0.0
        #: requests served whose client had already given up (wasted worker time).
        self.served_abandoned = 0

    @property
    def in_system(self) -> int:
        """Requests at the service: being served plus queued."""
        return self.busy + len(self.queue)

    def submit(self, request: Request, now: float) -> Admission:
        """A request arrives at *now*; start it, queue it or reject it."""
        request.enqueued = now
        if self.busy < self.workers:
            self.busy += 1
            return Admission.STARTED
        if len(self.queue) < self.queue_bound:
            self.queue.append(request)
            return Admission.QUEUED
        self.error_total += 1
        self._observe(self.params.reject_latency)
        return Admission.REJECTED

    def finish(self, request: Request, now: float) -> Request | None:
        """*request* is done at *now*; return the queued request started in its place."""
        self.busy -= 1
        self.ok_total += 1
        if request.answered:
            self.served_abandoned += 1
        self._observe(now - request.enqueued)
        if self.queue and self.busy < self.workers:
            self.busy += 1
            return self.queue.popleft()
        return None

    def set_workers(self, workers: int) -> list[Request]:
        """Change the capacity; return the queued requests started because of it."""
        self.workers = workers
        self.queue_bound = self.params.queue_bound(workers)
        started: list[Request] = []
        while self.queue and self.busy < self.workers:
            self.busy += 1
            started.append(self.queue.popleft())
        # A shrunken queue keeps the requests it already holds (they were
        # accepted); it only turns new ones away until it drains below the bound.
        return started

    def snapshot(self) -> Snapshot:
        """The counters as one scrape sees them."""
        cumulative: list[int] = []
        running = 0
        for count in self._bucket_counts:
            running += count
            cumulative.append(running)
        return (self.ok_total, self.error_total, *cumulative, self.duration_count)

    def _observe(self, seconds: float) -> None:
        self.duration_count += 1
        self.duration_sum += seconds
        buckets = self.buckets
        i = 0
        n = len(buckets)
        while i < n and seconds > buckets[i]:
            i += 1
        self._bucket_counts[i] += 1
