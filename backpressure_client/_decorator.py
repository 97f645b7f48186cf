"""The decorator face: ``@limit(limiter)`` on outbound call functions.

One decorator for plain functions, methods and ``async def`` functions; the
face (thread or task) is chosen once, at decoration time.  The decorated
function keeps its name, docstring, signature and type hints.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

import httpx

from ._limiter import Backpressure, ExceptionClassifier, Permit
from ._transport import (
    _DROPPED,
    _IGNORED,
    _SUCCESS,
    _as_outcome,
    _cancelled_by_deadline,
    _check_limiter,
    _note_retry_after,
    _release_for_exception,
    _wait_seconds,
    classify_http_exception,
)
from ._window import Outcome

__all__ = ["ExceptionOutcomes", "limit"]

P = ParamSpec("P")
R = TypeVar("R")

#: Exception classes mapped to outcomes, for example
#: ``{httpx.HTTPStatusError: Outcome.DROPPED}``.  The most specific class in
#: the raised exception's MRO wins; exceptions matching none fall back to
#: :func:`~backpressure_client.classify_http_exception`.
ExceptionOutcomes = Mapping[type[BaseException], Outcome | str]


def limit(
    limiter: Backpressure,
    *,
    wait_timeout: float | None = None,
    classify: ExceptionClassifier | ExceptionOutcomes | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each call holds one of *limiter*'s slots.

    A call takes a slot before the function runs and gives it back when it
    returns or raises (for an ``async def`` function: when the coroutine
    finishes, is cancelled included).  An ``async def`` call cancelled by
    the caller's deadline (``anyio.fail_after``, trio's deadlines) counts
    ``dropped``, as a timeout; a plain cancellation counts ``ignored``.  A
    call that is not admitted raises
    :class:`~backpressure_client.BackpressureError` without running the
    function.

    :param limiter: the limiter shared by every caller of the protected service.
    :param wait_timeout: seconds a call waits for a slot when the window is
        full; ``0`` fails fast; ``None`` uses the limiter's configured
        ``wait_timeout`` (``0`` unless configured).
    :param classify: how an exception raised by the function counts: a
        callable mapping the exception to an :class:`Outcome`, or a mapping of
        exception classes to outcomes (:data:`ExceptionOutcomes`).  Defaults
        to :func:`~backpressure_client.classify_http_exception`: timeouts are
        ``dropped``, ``httpx.HTTPStatusError`` counts as its response would
        (429/503 ``dropped``, with ``Retry-After`` honoured), anything else
        ``ignored``.  A call that returns is a ``success``.
    :raises TypeError: at decoration time, for a generator function (its body
        runs after the call returns, outside the slot) or a bad argument; at
        call time, when a function taken for sync returns an awaitable (the
        awaitable is closed and the slot released ``ignored``).
    :raises ValueError: for a negative or non-finite *wait_timeout*.

    The decorated function raises what the function raises, plus
    :class:`~backpressure_client.BackpressureError` (or its subclass
    :class:`~backpressure_client.WaitTimeoutError` after a wait) when it is
    not admitted.  Put ``@limit(...)`` below ``@classmethod`` and
    ``@staticmethod``::

        @limit(limiter, wait_timeout=2.0)
        def fetch(url: str) -> bytes: ...
    """
    _check_limiter(limiter)
    # Validated once, here.  None is passed on to the limiter as None (its
    # configured wait, validated by the config), which it does not re-check;
    # only `waits` decides between the waiting and the fail-fast call.
    wait = None if wait_timeout is None else _wait_seconds(wait_timeout, "wait_timeout")
    waits = bool(limiter.config.wait_timeout if wait is None else wait)
    classify_exc = resolve_classifier(classify)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"@limit cannot hold a slot for the generator function {func.__qualname__}: "
                "its body runs after the call returns; decorate the function that "
                "consumes it, or use `with limiter.slot():` inside it"
            )
        if not callable(func):
            raise TypeError(
                f"@limit needs a callable, got {type(func).__name__}; "
                "put @limit(...) below @classmethod / @staticmethod"
            )
        if _is_async(func):
            return cast("Callable[P, R]", _async_wrapper(limiter, wait, waits, classify_exc, func))
        return _sync_wrapper(limiter, wait, waits, classify_exc, func)

    return decorate


def resolve_classifier(
    classify: ExceptionClassifier | ExceptionOutcomes | None,
) -> ExceptionClassifier:
    """Turn the ``classify`` argument of the faces into an exception classifier.

    ``None`` gives :func:`~backpressure_client.classify_http_exception`; a
    callable is used as it is; a mapping of exception classes to outcomes is
    looked up along the raised exception's MRO, falling back to the default.

    :raises TypeError: if *classify* is none of these, or a mapping key is
        not an exception class.
    :raises ValueError: if a mapping value is not an outcome.
    """
    if classify is None:
        return classify_http_exception
    if isinstance(classify, Mapping):
        table: dict[type[BaseException], Outcome] = {}
        for cls, outcome in classify.items():
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"classify: key {cls!r} is not an exception class")
            try:
                table[cls] = _as_outcome(outcome)
            except ValueError:
                raise ValueError(
                    f"classify[{cls.__name__}]={outcome!r}: must be an Outcome "
                    "('success', 'dropped' or 'ignored')"
                ) from None

        def by_class(exc: BaseException) -> Outcome:
            for cls in type(exc).__mro__:
                found = table.get(cls)
                if found is not None:
                    return found
            return classify_http_exception(exc)

        return by_class
    if callable(classify):
        return classify
    raise TypeError(
        f"classify={classify!r}: must be a callable taking an exception and returning an "
        "Outcome, or a mapping of exception classes to outcomes"
    )


def _is_async(func: Callable[..., object]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # A callable object with an `async def __call__`.
    return not inspect.isfunction(func) and inspect.iscoroutinefunction(type(func).__call__)


def _exception_outcome(
    limiter: Backpressure,
    permit: Permit,
    classify: ExceptionClassifier,
    exc: BaseException,
    latency: float,
) -> None:
    outcome = _release_for_exception(permit, classify, exc, latency)
    if outcome is Outcome.DROPPED and isinstance(exc, httpx.HTTPStatusError):
        _note_retry_after(limiter, exc.response.headers)


def _sync_wrapper(
    limiter: Backpressure,
    wait: float | None,
    waits: bool,
    classify: ExceptionClassifier,
    func: Callable[P, R],
) -> Callable[P, R]:
    clock = limiter.clock
    try_acquire = limiter.try_acquire
    acquire = limiter.acquire

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        permit = acquire(wait) if waits else try_acquire()
        start = clock()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _exception_outcome(limiter, permit, classify, exc, clock() - start)
            raise
        if inspect.isawaitable(result):
            # An async callable that _is_async could not see (a lambda or a
            # partial returning a coroutine...): the slot would cover only the
            # creation of the coroutine, not its run.
            permit.release(_IGNORED, latency=clock() - start)
            close = getattr(result, "close", None)
            if close is not None:
                close()  # no "coroutine was never awaited" warning
            raise TypeError(
                f"@limit: {getattr(func, '__qualname__', func)!r} returned an awaitable, "
                "so the slot would be released before it runs; decorate an `async def` "
                "function, or mark the callable with inspect.markcoroutinefunction()"
            )
        permit.release(_SUCCESS, latency=clock() - start)
        return result

    return call


def _async_wrapper(
    limiter: Backpressure,
    wait: float | None,
    waits: bool,
    classify: ExceptionClassifier,
    func: Callable[P, Any],
) -> Callable[P, Any]:
    clock = limiter.clock
    try_acquire = limiter.try_acquire
    aacquire = limiter.aacquire

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> Any:
        permit = await aacquire(wait) if waits else try_acquire()
        start = clock()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            if _cancelled_by_deadline(exc):
                # The caller's deadline passed: a timeout, hence dropped.
                permit.release(_DROPPED, latency=clock() - start)
            else:
                # A plain cancellation counts ignored (the default classifier).
                _exception_outcome(limiter, permit, classify, exc, clock() - start)
            raise
        permit.release(_SUCCESS, latency=clock() - start)
        return result

    return call
