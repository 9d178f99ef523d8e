"""Held-out loss of each committed global version, scored by the orchestrator off the round path.

Operators watch the model get better (or not) in Grafana without running ``hetlora evaluate`` by hand. The
orchestrator already loads the base model for the module shapes; with ``--eval-corpus`` it also holds a
validation set (held-out blocks of a public corpus: the text ``hetlora evaluate`` scores). Scoring runs on its
own thread so a slow evaluation never delays a round, and when versions commit faster than they can be scored
only the newest waits: the gauge shows the current model, not a backlog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from services.orchestrator.listeners import RoundSummary
from trainer.adapter_io import load_adapter
from trainer.store import DirectoryStore
from trainer.strategies.base import GlobalAdapter

log = logging.getLogger("hetlora.orchestrator")


class VersionEvaluator:
    """A round listener that scores every committed version; ``on_loss(version, loss)`` hears each result."""

    def __init__(
        self,
        store: DirectoryStore,
        score: Callable[[GlobalAdapter], float],
        on_loss: Callable[[int, float], None],
    ) -> None:
        self.store, self._score, self._on_loss = store, score, on_loss
        self.losses: dict[int, float] = {}
        self._pending: int | None = None
        self._busy = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="evaluation", daemon=True)

    def start(self) -> None:
        """Score the newest version already committed (the base adapter on a fresh store), then follow rounds."""
        self.submit(self.store.latest_version())
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def submit(self, version: int) -> None:
        with self._cond:
            self._pending = version
            self._cond.notify_all()

    def wait_scored(self, version: int, timeout_s: float) -> bool:
        """Block (bounded) until ``version`` or a newer one has been scored."""
        with self._cond:
            return self._cond.wait_for(lambda: any(v >= version for v in self.losses), timeout=timeout_s)

    def round_started(self, index: int, ranks: Sequence[int]) -> None:
        return None

    def round_finished(self, summary: RoundSummary) -> None:
        if summary.committed:
            self.submit(summary.version)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                version, self._pending = self._pending, None
            assert version is not None
            try:
                loss = self._score(load_adapter(self.store.path(version)))
            except Exception:
                log.exception("scoring version %d on the held-out set failed", version)
                continue
            log.info("version %d: held-out loss %.4f", version, loss)
            self._on_loss(version, loss)
            with self._cond:
                self.losses[version] = loss
                self._cond.notify_all()
