"""What the coordinator tells the outside world about rounds: monitoring hooks, counts only, never device ids.

``services.metrics.PrometheusRoundListener`` exports them; ``services.orchestrator.evaluation`` scores each
committed version. :class:`RoundListeners` fans one event out to several listeners and keeps a failing
listener from failing the round (a round is committed before anyone is told).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("hetlora.orchestrator")


@dataclass(frozen=True)
class RoundSummary:
    """How one round attempt ended: committed (``version`` is new) or failed (``version`` is the one kept)."""

    committed: bool
    version: int
    reported: int = 0
    dropped: int = 0
    wall_s: float = 0.0
    ranks_after: tuple[int, ...] = ()  # each reporting device's rank after self-pruning
    upload_bytes: int = 0
    privacy: dict[str, Any] = field(default_factory=dict)  # the version record's "privacy"/"example_privacy"
    rejected: str = ""  # why sums that came back were not committed (sum_out_of_range, excluded_device)
    refused_reports: tuple[tuple[str, int], ...] = ()  # (field, count) of reports refused in this attempt


class RoundListener(Protocol):
    def round_started(self, index: int, ranks: Sequence[int]) -> None: ...

    def round_finished(self, summary: RoundSummary) -> None: ...


class RoundListeners:
    """Calls every listener in order; one raising is logged and the rest still hear the event."""

    def __init__(self, *listeners: RoundListener) -> None:
        self.listeners = listeners

    def round_started(self, index: int, ranks: Sequence[int]) -> None:
        for listener in self.listeners:
            try:
                listener.round_started(index, ranks)
            except Exception:
                log.exception("round listener %s failed on round_started", type(listener).__name__)

    def round_finished(self, summary: RoundSummary) -> None:
        for listener in self.listeners:
            try:
                listener.round_finished(summary)
            except Exception:
                log.exception("round listener %s failed on round_finished", type(listener).__name__)
