"""Observability hooks, injected: the services implement this with Prometheus, tests with a recorder.

Kept to events the library knows about (stage transitions, dropouts, aborts, reconstruction cost, bucket
outcomes); the transport owns byte counts and latencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from secure_agg.buckets import BucketOutcome
from secure_agg.config import Stage


class StageListener(Protocol):
    """Receives server-side protocol events."""

    def stage_closed(self, stage: Stage, survivors: int, dropped: Sequence[int]) -> None:
        """A stage ended with ``survivors`` clients; ``dropped`` were expected but did not answer."""

    def aborted(self, stage: Stage, reason: str) -> None:
        """The round aborted during ``stage``."""

    def completed(self, survivors: int, outcomes: Sequence[BucketOutcome], reconstruction_s: float) -> None:
        """The round produced its sums; ``reconstruction_s`` is the wall time of Shamir + mask removal."""


class NullListener:
    """A listener that ignores everything (the default)."""

    def stage_closed(self, stage: Stage, survivors: int, dropped: Sequence[int]) -> None:
        return None

    def aborted(self, stage: Stage, reason: str) -> None:
        return None

    def completed(self, survivors: int, outcomes: Sequence[BucketOutcome], reconstruction_s: float) -> None:
        return None
