"""One condition that both threads and asyncio handlers can wait on.

The round state machines (``StageRound``, the coordinator) are driven by threads and guarded by a
``threading.Condition``. Under ``grpc.aio`` a waiting call must not hold a thread, so an async handler
registers a waker instead: ``notify_all`` wakes the condition's threads and schedules every waker on its own
event loop. A waiting device then costs a registered callback, not a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class Wakeups:
    """``notify_all`` (with the condition held) wakes threads in ``cond.wait`` and coroutines in ``wait_for``."""

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self._wakers: set[Callable[[], None]] = set()

    def notify_all(self) -> None:
        self.cond.notify_all()
        for wake in list(self._wakers):
            wake()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Like ``Condition.wait_for`` without a thread: True once ``predicate()`` holds, False on timeout.

        The predicate is evaluated with the condition held, as ``Condition.wait_for`` does.
        """
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(woken.set)

        deadline = loop.time() + timeout_s
        with self.cond:
            self._wakers.add(wake)
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
                self._wakers.discard(wake)
