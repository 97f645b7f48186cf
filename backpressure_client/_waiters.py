"""Waiters: callers parked in the limiter's FIFO queue until a slot is theirs.

A waiter is granted a slot *by the releasing caller*, under the limiter's
lock (a hand-off), and then woken.  The releasing caller may be a thread or a
task on any event loop, so each waiter carries a ``wake`` callable that is
safe to call from any thread, and never blocks.

Async waiters support asyncio and trio (the two anyio backends): the waiter
waits on the running library's own event, and a wake from another thread is
passed to that loop through its thread-safe entry point.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections.abc import Awaitable, Callable

__all__ = ["AsyncWaiter", "ThreadWaiter", "Waiter"]


class Waiter:
    """What the limiter needs to know about a parked caller."""

    __slots__ = ("closed", "granted", "in_flight", "seq")

    def __init__(self) -> None:
        #: set under the limiter's lock when a slot is handed to this waiter.
        self.granted = False
        #: set under the limiter's lock when the limiter closes.
        self.closed = False
        self.seq = 0
        self.in_flight = 0

    def wake(self) -> bool:  # pragma: no cover - overridden
        """Wake the waiter from any thread, without blocking.

        :returns: ``False`` when it can no longer be woken (its event loop
            is closed or finished): the caller takes the slot back.
        """
        raise NotImplementedError


class ThreadWaiter(Waiter):
    """A thread blocked on a private lock that the hand-off releases."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> bool:
        """Release the waiting thread."""
        self._lock.release()
        return True

    def wait(self, timeout: float) -> bool:
        """Block up to *timeout* seconds; true when woken."""
        # Lock.acquire raises OverflowError beyond TIMEOUT_MAX (~49 days on
        # some platforms); a longer wait is as good as that one.
        if timeout == math.inf:
            return self._lock.acquire()
        return self._lock.acquire(timeout=min(timeout, threading.TIMEOUT_MAX))


class AsyncWaiter(Waiter):
    """A task waiting on its event loop's own event."""

    __slots__ = ("_wake", "wait")

    wait: Callable[[], Awaitable[object]]

    def __init__(self) -> None:
        super().__init__()
        self._wake: Callable[[], bool]
        owner = threading.get_ident()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            event = asyncio.Event()
            self.wait = event.wait

            def wake() -> bool:
                # A closed loop raises RuntimeError either way: its task is
                # gone and will never take the slot.
                try:
                    if threading.get_ident() == owner:
                        event.set()
                    else:
                        loop.call_soon_threadsafe(event.set)
                except RuntimeError:
                    return False
                return True

            self._wake = wake
            return
        trio = sys.modules.get("trio")
        if trio is None:
            raise RuntimeError("waiting for a slot needs a running asyncio or trio event loop")
        trio_event = trio.Event()
        token = trio.lowlevel.current_trio_token()
        self.wait = trio_event.wait

        def trio_wake() -> bool:
            try:
                if threading.get_ident() == owner:
                    trio_event.set()
                else:
                    token.run_sync_soon(trio_event.set)
            except (trio.RunFinishedError, RuntimeError):
                return False
            return True

        self._wake = trio_wake

    def wake(self) -> bool:
        """Set the task's event, through its loop when called from another thread."""
        return self._wake()
