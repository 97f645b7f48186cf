"""The httpx face: transports that admit each request through a limiter.

:class:`BackpressureTransport` and :class:`AsyncBackpressureTransport` wrap any
inner transport.  A request takes a slot *before* the inner transport sees it
(a rejected request sends nothing) and gives it back when the response is
closed, so a slot covers the whole exchange, body included:

- ``client.get(...)`` and friends release once the body has been read;
- ``with client.stream(...)`` holds the slot until the block exits;
- ``client.send(..., stream=True)`` holds it until ``response.close()``.

Close every streamed response (``with client.stream(...)``, or ``close()`` /
``aclose()`` in a ``finally``): one that is dropped unclosed holds its slot
for good, and enough of them fill the window.  The slot is not released from
a finaliser: the garbage collector may run while the same thread holds the
limiter's (non-reentrant) lock.

A response that arrives already closed (its body read in full by the inner
transport, as ``httpx.MockTransport`` does with ``Response(content=...)``)
releases at once: nothing of it is left on the wire.

How a request ended is decided by two replaceable classifiers: one for
responses (:func:`classify_response`) and one for exceptions
(:func:`classify_http_exception`).  A ``Retry-After`` header on a response
classified ``dropped`` becomes the ``retry_after`` hint of the rejections that
follow, until it passes.

Request extension
    ``"backpressure_timeout"``: seconds this request may wait for a slot,
    overriding the transport's ``wait_timeout``; ``0`` fails fast, ``None``
    (or absent) uses the transport's setting::

        client.get(url, extensions={"backpressure_timeout": 2.0})
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timezone
from typing import Final

import anyio
import httpx

from ._limiter import Backpressure, ExceptionClassifier, Permit
from ._window import Outcome

__all__ = [
    "AsyncBackpressureTransport",
    "BackpressureTransport",
    "ResponseClassifier",
    "classify_http_exception",
    "classify_response",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

#: Maps a response (headers received, body not yet read) to an outcome.
ResponseClassifier = Callable[[httpx.Response], Outcome | str]

#: The request extension that sets a per-request wait for a slot, in seconds.
TIMEOUT_EXTENSION: Final = "backpressure_timeout"

_SUCCESS: Final = Outcome.SUCCESS
_DROPPED: Final = Outcome.DROPPED
_IGNORED: Final = Outcome.IGNORED

#: Retry-After hints longer than this (seconds) are clamped to it.
_MAX_RETRY_AFTER: Final = 86_400.0


# -- classifiers -------------------------------------------------------------


def classify_response(response: httpx.Response) -> Outcome:
    """The default response classifier.

    ``429 Too Many Requests`` and ``503 Service Unavailable`` are ``dropped``:
    the service says it is overloaded, and the window shrinks at once.  Any
    other status below 500 (2xx, 3xx, 4xx) is ``success``: the service
    handled the request.  Other 5xx statuses are ``ignored``: a server error
    says nothing about load.

    Replace it with any callable taking an :class:`httpx.Response` (headers
    received, body not read yet) and returning an :class:`Outcome`; delegate
    to this function for the statuses you do not care about.
    """
    code = response.status_code
    if code < 500:
        return _DROPPED if code == 429 else _SUCCESS
    return _DROPPED if code == 503 else _IGNORED


def classify_http_exception(exc: BaseException) -> Outcome:
    """The default exception classifier of the httpx face, the decorator and the batch helper.

    - :class:`httpx.TimeoutException` and the built-in :class:`TimeoutError`
      are ``dropped``: a timeout is evidence of overload.
    - :class:`httpx.HTTPStatusError` (from ``raise_for_status()``) is
      classified by its response, as :func:`classify_response` does.
    - Anything else -- connection errors, client-side bugs, cancellation --
      is ``ignored``: it says nothing about the service's load.
    """
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return _DROPPED
    if isinstance(exc, httpx.HTTPStatusError):
        return classify_response(exc.response)
    return _IGNORED


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Read a ``Retry-After`` header value as seconds from now.

    Accepts delta-seconds (``"120"``; a decimal such as ``"1.5"`` is tolerated)
    and HTTP dates (``"Wed, 21 Oct 2015 07:28:00 GMT"``).  A date in the past
    gives ``0.0``; hints beyond a day are clamped to a day.

    :param value: the header value.
    :param now: the current wall-clock time as a Unix timestamp, in seconds,
        for HTTP dates; defaults to :func:`time.time`.
    :returns: seconds (>= 0), or ``None`` when the value cannot be read.
    """
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit():
        try:
            seconds = float(text)
        except ValueError:
            return None
        if not math.isfinite(seconds):
            return _MAX_RETRY_AFTER
        return min(seconds, _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        when = when.replace(tzinfo=timezone.utc)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, delta), _MAX_RETRY_AFTER)


def _as_outcome(value: Outcome | str) -> Outcome:
    return value if value.__class__ is Outcome else Outcome(value)


def _note_retry_after(limiter: Backpressure, headers: httpx.Headers) -> None:
    """Pass a ``Retry-After`` header on to *limiter*, if there is a readable one."""
    value = headers.get("retry-after")
    if value is None:
        return
    seconds = parse_retry_after(value)
    if seconds is None:
        logger.debug("ignoring an unreadable Retry-After header: %r", value)
    elif seconds > 0:
        limiter.set_retry_after(seconds)


def _release_for_exception(
    permit: Permit, classify: ExceptionClassifier, exc: BaseException, latency: float
) -> Outcome:
    """Release *permit* as *classify* maps *exc*; ``ignored`` if the classifier fails.

    A failing classifier's own exception propagates (chained to *exc*), but
    only after the slot has been given back.
    """
    outcome = _IGNORED
    try:
        outcome = _as_outcome(classify(exc))
    finally:
        permit.release(outcome, latency=latency)
    return outcome


def _check_limiter(limiter: object) -> None:
    """Refuse anything but a :class:`Backpressure` where the faces take a limiter."""
    if not isinstance(limiter, Backpressure):
        raise TypeError(
            f"limiter must be a Backpressure, got {type(limiter).__name__}; "
            "create one with Backpressure(BackpressureConfig(...))"
        )


def _cancelled_by_deadline(exc: BaseException) -> bool:
    """Whether *exc* is a cancellation caused by a deadline (a caller's timeout).

    Read from the cancellation itself, so the request path pays nothing for
    it: trio's ``Cancelled.source`` is ``"deadline"`` for ``fail_after`` /
    ``move_on_after`` deadlines, and anyio on asyncio cancels with the message
    ``"... reason: deadline exceeded"``.  A native ``asyncio.timeout`` (which
    anyio cannot see) and any cancellation whose cause cannot be read count
    as plain cancellations: ``ignored``, the safe side.
    """
    if isinstance(exc, asyncio.CancelledError):
        return any(isinstance(arg, str) and "deadline exceeded" in arg for arg in exc.args)
    return exc.__class__.__name__ == "Cancelled" and getattr(exc, "source", None) == "deadline"


def _wait_seconds(value: object, what: str) -> float:
    """Validate a wait for a slot given by the user, in seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what}={value!r}: must be a number of seconds (0 fails fast)")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}={value!r}: must be a finite number of seconds >= 0")
    return float(value)


# -- the shared part of both transports --------------------------------------


class _Admission:
    """Admission, classification and hints, shared by the sync and async transports.

    No ``__slots__`` here or in the transports: ``httpx.BaseTransport`` gives
    every instance a ``__dict__`` anyway.
    """

    def __init__(
        self,
        limiter: Backpressure,
        wait_timeout: float | None,
        classify: ResponseClassifier,
        classify_error: ExceptionClassifier,
    ) -> None:
        _check_limiter(limiter)
        if not callable(classify) or not callable(classify_error):
            raise TypeError("classify and classify_error must be callables returning an Outcome")
        self._limiter = limiter
        self._try_acquire = limiter.try_acquire
        self._clock = limiter.clock
        # Validated once, here: requests that use the transport's own wait
        # skip the check.  None (the limiter's configured wait, validated by
        # the config) is passed on as None, which the limiter does not check.
        self._acquire_timeout = (
            None if wait_timeout is None else _wait_seconds(wait_timeout, "wait_timeout")
        )
        self._wait_timeout = (
            limiter.config.wait_timeout if wait_timeout is None else self._acquire_timeout
        )
        self._classify = classify
        self._default_classify = classify is classify_response
        self._classify_error = classify_error

    @property
    def limiter(self) -> Backpressure:
        """The limiter that admits this transport's requests."""
        return self._limiter

    def _wait_for(self, request: httpx.Request) -> float | None:
        """Seconds *request* may wait for a slot.

        ``0`` fails fast; ``None`` is the limiter's configured wait (already
        validated by the config); a request's own extension is checked here.
        """
        value = request.extensions.get(TIMEOUT_EXTENSION)
        if value is not None:
            return _wait_seconds(value, f"request.extensions[{TIMEOUT_EXTENSION!r}]")
        return self._acquire_timeout if self._wait_timeout else 0.0

    def _outcome(self, response: httpx.Response) -> Outcome:
        """Classify *response*; the default classifier's success case makes no call."""
        if self._default_classify:
            code = response.status_code
            if code < 500 and code != 429:
                return _SUCCESS
        return self._judge(response)

    def _judge(self, response: httpx.Response) -> Outcome:
        """Classify *response*; a ``dropped`` one passes its ``Retry-After`` on to the limiter."""
        outcome = _as_outcome(self._classify(response))
        if outcome is _DROPPED:
            _note_retry_after(self._limiter, response.headers)
        return outcome


# -- sync --------------------------------------------------------------------


class _ReleasingByteStream(httpx.SyncByteStream):
    """The response body; closing it (once) closes the inner body and releases the slot."""

    def __init__(
        self,
        stream: httpx.SyncByteStream,
        permit: Permit,
        outcome: Outcome,
        start: float,
        owner: BackpressureTransport,
    ) -> None:
        self._stream = stream
        # None once closed: the _closed flag and the permit in one attribute.
        self._permit: Permit | None = permit
        self._outcome = outcome
        self._start = start
        self._owner = owner

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except BaseException as exc:
            try:
                # GeneratorExit: the reader stopped early, not a failure.
                if exc.__class__ is not GeneratorExit:
                    self._outcome = _IGNORED
                    self._outcome = _as_outcome(self._owner._classify_error(exc))
            finally:
                self.close()
            raise

    def close(self) -> None:
        permit = self._permit
        if permit is None:
            return
        self._permit = None
        try:
            self._stream.close()
        finally:
            permit.release(self._outcome, latency=self._owner._clock() - self._start)


class BackpressureTransport(_Admission, httpx.BaseTransport):
    """An :class:`httpx.BaseTransport` that admits each request through *limiter*.

    :param limiter: the limiter shared by every client of the protected service.
    :param transport: the inner transport that does the I/O; any
        :class:`httpx.BaseTransport`, another wrapper included.  Defaults to
        ``httpx.HTTPTransport()``.
    :param wait_timeout: seconds a request waits for a slot when the window is
        full; ``0`` fails fast; ``None`` uses the limiter's configured
        ``wait_timeout`` (``0`` unless configured).  A request overrides it
        with the ``"backpressure_timeout"`` extension.
    :param classify: maps a response to an outcome; see :func:`classify_response`.
    :param classify_error: maps an exception raised by the inner transport or
        while reading the body to an outcome; see :func:`classify_http_exception`.

    :meth:`handle_request` raises :class:`~backpressure_client.BackpressureError`
    when the request is not admitted, and nothing is sent.  The slot is held
    until the response is closed and released exactly once, whatever happens;
    the seconds it was held (by the limiter's clock, from admission to close)
    are reported as the request's latency (``LimiterStats.latency_seconds``).
    :meth:`close` closes the inner transport.

    Usage::

        client = httpx.Client(transport=BackpressureTransport(limiter))
    """

    def __init__(
        self,
        limiter: Backpressure,
        transport: httpx.BaseTransport | None = None,
        *,
        wait_timeout: float | None = None,
        classify: ResponseClassifier = classify_response,
        classify_error: ExceptionClassifier = classify_http_exception,
    ) -> None:
        super().__init__(limiter, wait_timeout, classify, classify_error)
        self._transport = httpx.HTTPTransport() if transport is None else transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Admit *request*, send it through the inner transport, and return the response.

        :raises BackpressureError: the window is full (and the wait, if any,
            timed out: :class:`~backpressure_client.WaitTimeoutError`).
        :raises LimiterStateError: the limiter is closed or not started.
        :raises httpx.TransportError: as the inner transport raises it.
        """
        wait = self._wait_for(request)
        permit = self._try_acquire() if wait == 0 else self._limiter.acquire(wait)
        clock = self._clock
        start = clock()
        try:
            response = self._transport.handle_request(request)
        except BaseException as exc:
            _release_for_exception(permit, self._classify_error, exc, clock() - start)
            raise
        try:
            outcome = self._outcome(response)
            if response.is_closed:
                permit.release(outcome, latency=clock() - start)
                return response
            stream = response.stream
            if not isinstance(stream, httpx.SyncByteStream):
                raise TypeError(
                    f"the inner transport {self._transport!r} returned an async response "
                    "stream; wrap it in AsyncBackpressureTransport instead"
                )
        except BaseException:
            if not permit.released:
                try:
                    # A misbehaving inner transport may hand back an async stream.
                    close = getattr(response.stream, "close", None)
                    if close is not None:
                        close()
                finally:
                    permit.release(_IGNORED, latency=clock() - start)
            raise
        response.stream = _ReleasingByteStream(stream, permit, outcome, start, self)
        return response

    def close(self) -> None:
        """Close the inner transport."""
        self._transport.close()

    def __repr__(self) -> str:
        return f"<BackpressureTransport limiter={self._limiter.name!r} inner={self._transport!r}>"


# -- async -------------------------------------------------------------------


class _AsyncReleasingByteStream(httpx.AsyncByteStream):
    """The async response body; closing it (once, shielded) releases the slot.

    It is its own iterator rather than an async generator: asyncio registers
    every async generator with its loop on first use, a cost (and a weak
    reference) per response that this hot path does without.
    """

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        permit: Permit,
        outcome: Outcome,
        start: float,
        owner: AsyncBackpressureTransport,
    ) -> None:
        self._stream = stream
        self._permit: Permit | None = permit
        self._outcome = outcome
        self._start = start
        self._owner = owner

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._chunks = self._stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            try:
                self._outcome = _IGNORED
                if _cancelled_by_deadline(exc):
                    self._outcome = _DROPPED
                else:
                    self._outcome = _as_outcome(self._owner._classify_error(exc))
            finally:
                await self.aclose()
            raise

    async def aclose(self) -> None:
        permit = self._permit
        if permit is None:
            return
        self._permit = None
        stream = self._stream
        try:
            if stream.__class__ is httpx.ByteStream:
                # An in-memory body: its aclose() does nothing and cannot be
                # interrupted, so the shield (several microseconds) is skipped.
                await stream.aclose()
            else:
                # A cancelled task still closes the inner body (and so returns
                # its connection to the pool), as httpcore's PoolByteStream does.
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
        finally:
            permit.release(self._outcome, latency=self._owner._clock() - self._start)


class AsyncBackpressureTransport(_Admission, httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` that admits each request through *limiter*.

    The async twin of :class:`BackpressureTransport`, for ``httpx.AsyncClient``
    on asyncio or trio; the parameters are the same, and *transport* defaults
    to ``httpx.AsyncHTTPTransport()``.

    Waiting for a slot does not block the event loop, and a free slot is
    taken without yielding to it.  A task cancelled while it waits, while the
    request is on the wire or while it reads the body releases its slot
    (``ignored``); the inner body is closed shielded from the cancellation.
    A cancellation caused by the caller's own deadline (``anyio.fail_after``,
    ``anyio.move_on_after``, trio's deadlines) is a timeout and counts
    ``dropped``, whatever
    *classify_error* says; a native ``asyncio.timeout`` cannot be told from a
    plain cancellation and counts ``ignored``.
    :meth:`aclose` closes the inner transport.
    """

    def __init__(
        self,
        limiter: Backpressure,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        wait_timeout: float | None = None,
        classify: ResponseClassifier = classify_response,
        classify_error: ExceptionClassifier = classify_http_exception,
    ) -> None:
        super().__init__(limiter, wait_timeout, classify, classify_error)
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Admit *request*, send it through the inner transport, and return the response.

        :raises BackpressureError: the window is full (and the wait, if any,
            timed out: :class:`~backpressure_client.WaitTimeoutError`).
        :raises LimiterStateError: the limiter is closed or not started.
        :raises httpx.TransportError: as the inner transport raises it.
        """
        wait = self._wait_for(request)
        permit = self._try_acquire() if wait == 0 else await self._limiter.aacquire(wait)
        clock = self._clock
        start = clock()
        try:
            response = await self._transport.handle_async_request(request)
        except BaseException as exc:
            if _cancelled_by_deadline(exc):
                permit.release(_DROPPED, latency=clock() - start)
            else:
                _release_for_exception(permit, self._classify_error, exc, clock() - start)
            raise
        try:
            outcome = self._outcome(response)
            if response.is_closed:
                permit.release(outcome, latency=clock() - start)
                return response
            stream = response.stream
            if not isinstance(stream, httpx.AsyncByteStream):
                raise TypeError(
                    f"the inner transport {self._transport!r} returned a sync response "
                    "stream; wrap it in BackpressureTransport instead"
                )
        except BaseException:
            if not permit.released:
                try:
                    aclose = getattr(response.stream, "aclose", None)
                    if aclose is not None:
                        with anyio.CancelScope(shield=True):
                            await aclose()
                finally:
                    permit.release(_IGNORED, latency=clock() - start)
            raise
        response.stream = _AsyncReleasingByteStream(stream, permit, outcome, start, self)
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._transport.aclose()

    def __repr__(self) -> str:
        return (
            f"<AsyncBackpressureTransport limiter={self._limiter.name!r} inner={self._transport!r}>"
        )
