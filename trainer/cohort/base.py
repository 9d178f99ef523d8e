"""What "train the cohort" means for a simulation, whatever runs it.

The round engine plans, distributes, aggregates and commits in the driver; only the cohort's training is
handed to a runner. A runner takes one :class:`ClientJob` per sampled client (its task and its privacy ledger)
and returns one :class:`ClientOutcome` per job, in job order, so that every backend feeds the engine the same
reports in the same order and the aggregate does not depend on which backend trained it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from trainer.device import Report, Task
from trainer.privacy.device_side import DevicePrivacy
from trainer.strategies.base import Strategy


@dataclass(frozen=True)
class ClientJob:
    """One sampled client's training in one round."""

    client_id: str
    task: Task
    privacy: DevicePrivacy  # its ledger before this round; the outcome carries it after


@dataclass(frozen=True)
class ClientOutcome:
    """How one job ended. ``report`` is None when the client is a dropout of the round: its example-level
    budget is spent (``exhausted``) or its task failed twice (``error`` says why)."""

    client_id: str
    report: Report | None
    privacy: DevicePrivacy
    exhausted: bool = False
    error: str | None = None
    attempts: int = 1
    worker: str = "driver"  # where it trained: "driver", or a Ray actor's index and node
    stats: dict[str, float] = field(default_factory=dict)  # rss_mib, cuda_peak_mib, seconds

    @property
    def dropped(self) -> bool:
        return self.report is None


class CohortRunner(Protocol):
    """Trains a round's cohort; the simulation owns one per run and closes it at the end."""

    name: str

    def train(self, strategy: Strategy, jobs: list[ClientJob]) -> list[ClientOutcome]:
        """One outcome per job, in the order of ``jobs``."""
        ...

    def close(self) -> None:
        """Release what the runner holds (actors, a local cluster)."""
        ...
