"""Puts cohort members out of the running round: devices revoked mid-round, and devices whose report was refused.

The servicers check revocation when a call starts, but a round outlives any one call: a device revoked while
it long-polls, trains or runs the secure stages must stop counting within one stage. So while a round runs, a
thread here re-reads the registry's revoked set every ``poll_s`` and tells the aggregator (``exclude``) to treat
each revoked member as a dropout from its next stage on; SecAgg+ then removes its masks like any dropout's.
The same path serves a refused report. The RPC runs on this thread, never under the coordinator's lock or on
the orchestrator's event loop.

If the aggregator had already summed an excluded device's masked input, nothing can take it out of the sums
again: the device is *tainted* and the coordinator does not commit that attempt (it re-runs the round
without the device).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

log = logging.getLogger("hetlora.orchestrator")
END_WAIT_S = 30.0  # the longest the end of a round waits for exclusions the aggregator has not confirmed


class RoundGuard:
    """Exclusions for one round at a time: ``begin`` → ``exclude``/revocation polling → ``end``."""

    def __init__(
        self,
        revoked_now: Callable[[], frozenset[str]],
        exclude: Callable[[int, list[int], str], tuple[int, ...]],
        poll_s: float = 1.0,
    ) -> None:
        self._revoked_now, self._exclude, self.poll_s = revoked_now, exclude, poll_s
        self._cond = threading.Condition()
        self._round_id: int | None = None
        self._ids: dict[str, int] = {}
        self._why: dict[str, str] = {}  # excluded device -> why
        self._queue: list[str] = []  # excluded, not yet told to the aggregator
        self._tainted: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-guard", daemon=True)
        self._thread.start()

    def begin(self, round_id: int, ids: dict[str, int]) -> None:
        """A secure round opened for this cohort (device → client id)."""
        with self._cond:
            self._round_id, self._ids = round_id, dict(ids)
            self._why, self._queue, self._tainted = {}, [], set()
            self._cond.notify_all()

    def end(self) -> tuple[dict[str, str], set[str]]:
        """The round is over: who was excluded (and why), and who is tainted (excluded once already summed)."""
        with self._cond:
            # Exclusions still in flight decide whether the sums can be trusted; unconfirmed ones count as summed.
            self._cond.wait_for(lambda: not self._queue, timeout=END_WAIT_S)
            tainted = self._tainted | set(self._queue)
            self._queue = []
            self._round_id, self._ids = None, {}
            return dict(self._why), tainted

    def exclude(self, device: str, why: str) -> None:
        """Put ``device`` out of the running round (no-op if it is not in it, or already out)."""
        with self._cond:
            if self._round_id is None or device not in self._ids or device in self._why:
                return
            self._why[device] = why
            self._queue.append(device)
            self._cond.notify_all()

    def excluded(self, device: str) -> str | None:
        """Why ``device`` is out of the running round, or None."""
        with self._cond:
            return self._why.get(device)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._stop.is_set(), timeout=self.poll_s)
                active = self._round_id is not None
            if active:
                self._poll_revocations()
                self._send()

    def _poll_revocations(self) -> None:
        try:
            revoked = self._revoked_now()
        except Exception:  # a busy registry: try again next poll
            log.warning("could not read revocations; retrying in %.1f s", self.poll_s)
            return
        with self._cond:
            members = [d for d in self._ids if d in revoked and d not in self._why]
        for device in members:
            log.warning("device=%s revoked during its round: out of the round from its next stage", device)
            self.exclude(device, "revoked")

    def _send(self) -> None:
        with self._cond:
            round_id, batch = self._round_id, list(self._queue)
            ids = {d: self._ids[d] for d in batch}
        if round_id is None or not batch:
            return
        reasons = "; ".join(sorted({self._why[d] for d in batch}))
        try:
            summed = set(self._exclude(round_id, [ids[d] for d in batch], reasons))
        except grpc.RpcError as e:  # the aggregator cannot confirm: assume the inputs are in the sums
            log.warning("round_id=%d: aggregator did not confirm exclusions (%s)", round_id, e.code().name)
            summed = set(ids.values())
        with self._cond:
            if self._round_id == round_id:
                self._tainted.update(d for d in batch if ids[d] in summed)
            self._queue = [d for d in self._queue if d not in batch]
            self._cond.notify_all()
