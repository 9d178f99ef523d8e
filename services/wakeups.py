"""One condition that both threads and asyncio handlers can wait on.

The round state machines (``StageRound``, the coordinator) are driven by threads and guarded by a
``threading.Condition``. Under ``grpc.aio`` a waiting call must not hold a thread, so an async handler
registers a waker instead: ``notify_all`` wakes the condition's threads and schedules every waker on its own
event loop. A waiting device then costs a registered callback, not a worker.

A waker may be filed under a key (a device's id): ``notify(key)`` wakes the threads and only that key's
wakers. Events that concern one device (its newer poll replacing an older one) use it, so that with N devices
waiting, N check-ins cost N wake-ups, not N² (measured before: 0.7 CPU-s/s of the orchestrator's event loop
at 600 idle devices polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Hashable, Iterable


class Wakeups:
    """``notify_all`` (with the condition held) wakes threads in ``cond.wait`` and coroutines in ``wait_for``."""

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self._wakers: dict[Hashable, set[Callable[[], None]]] = {}

    def notify_all(self) -> None:
        """Wake every thread and every waker (with the condition held)."""
        self.cond.notify_all()
        for wakers in list(self._wakers.values()):
            for wake in list(wakers):
                wake()

    def notify(self, key: Hashable) -> None:
        """Wake every thread, but only the wakers filed under ``key`` (with the condition held)."""
        self.cond.notify_all()
        for wake in list(self._wakers.get(key, ())):
            wake()

    def notify_keys(self, keys: Iterable[Hashable]) -> None:
        """``notify`` for several keys at once: the threads once, then each key's wakers."""
        self.cond.notify_all()
        for key in keys:
            for wake in list(self._wakers.get(key, ())):
                wake()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float, key: Hashable = None) -> bool:
        """Like ``Condition.wait_for`` without a thread: True once ``predicate()`` holds, False on timeout.

        The predicate is evaluated with the condition held, as ``Condition.wait_for`` does. ``key`` files the
        waker so that ``notify(key)`` reaches it; ``notify_all`` reaches every waker whatever its key.
        """
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(woken.set)

        deadline = loop.time() + timeout_s
        with self.cond:
            self._wakers.setdefault(key, set()).add(wake)
        try:
            while True:
                with self.cond:
                    if predicate():
                        return True
                    woken.clear()  # a notify from now on schedules a set() after this clear
                left = deadline - loop.time()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), left)
        finally:
            with self.cond:
                wakers = self._wakers.get(key)
                if wakers is not None:
                    wakers.discard(wake)
                    if not wakers:
                        del self._wakers[key]
