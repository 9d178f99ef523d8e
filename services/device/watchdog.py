"""One thread that cancels the device's calls that outlive their deadline.

A gRPC call's deadline is enforced by the channel's own event thread. In one process with hundreds of channels
(the load harness: 500 devices per process) a stream that stalled once was seen to wait in ``next()`` forever,
its deadline never firing. ``call.cancel()`` from any thread ends such a wait, so the device arms one timer per
call on a single shared thread (a heap of deadlines), not one thread per call.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Watchdog:
    """Runs ``cancel`` callbacks at their deadlines unless disarmed first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._armed: set[int] = set()
        self._fired: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, after_s: float, cancel: Callable[[], object]) -> int:
        """Call ``cancel`` in ``after_s`` seconds; returns the handle for :meth:`disarm`."""
        with self._cond:
            handle = next(self._ids)
            heapq.heappush(self._heap, (time.monotonic() + after_s, handle, cancel))
            self._armed.add(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="call-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def disarm(self, handle: int) -> bool:
        """Forget the timer; True when it had already fired (the call was cancelled by the watchdog)."""
        with self._cond:
            self._armed.discard(handle)
            if handle in self._fired:
                self._fired.discard(handle)
                return True
            return False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(timeout=self._heap[0][0] - time.monotonic() if self._heap else None)
                _, handle, cancel = heapq.heappop(self._heap)
                if handle not in self._armed:
                    continue
                self._armed.discard(handle)
                self._fired.add(handle)
            cancel()  # outside the lock: grpc's cancel takes its own


WATCHDOG = Watchdog()  # the process's one watchdog thread, started by the first call it guards
