"""The default backend: the driver trains the cohort itself, one client after another."""

from __future__ import annotations

from trainer.cohort.base import ClientJob, ClientOutcome
from trainer.cohort.client_trainer import ClientTrainer
from trainer.strategies.base import Strategy


class InProcessRunner:
    """Every job on the driver's model; an error other than a spent budget propagates (a bug, not a dropout)."""

    name = "in-process"

    def __init__(self, trainer: ClientTrainer) -> None:
        self.trainer = trainer

    def train(self, strategy: Strategy, jobs: list[ClientJob]) -> list[ClientOutcome]:
        return [self.trainer.run(strategy, job) for job in jobs]

    def close(self) -> None:
        """Nothing to release: the model belongs to the simulation."""
