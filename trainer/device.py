"""One device's part of a round: train from the task's factors, then build the upload.

The in-process simulation calls :func:`run_task` directly; the device agent calls the same function after
receiving the task over gRPC, then masks the contribution for secure aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.types import ClientDataset
from trainer.factors import ModuleFactors
from trainer.local_train import TrainConfig, train_local
from trainer.privacy.device_side import DevicePrivacy, ExampleSpend, plan_private_steps, private_update, record_spend
from trainer.strategies.base import Contribution, Strategy


@dataclass(frozen=True)
class Task:
    """What the orchestrator sends a device for one round."""

    round: int
    version: int
    rank: int
    factors: ModuleFactors
    seed: int
    component_cohorts: tuple[int, ...] = ()  # distributed DP: shares each component's noise is split into


@dataclass(frozen=True)
class Report:
    """What a device sends back: its contribution (masked under secure aggregation) and plain metadata."""

    client_id: str
    rank_before: int
    rank: int
    contribution: Contribution | None  # None on the server under secure aggregation: only the sums exist there
    train_loss: float
    num_examples: int
    declared_upload_floats: int = 0
    example_privacy: ExampleSpend | None = None  # example-level DP spent so far by this device

    @property
    def upload_floats(self) -> int:
        return self.contribution.upload_floats() if self.contribution else self.declared_upload_floats


def run_task(
    strategy: Strategy,
    model: torch.nn.Module,
    data: ClientDataset,
    task: Task,
    train: TrainConfig,
    privacy: DevicePrivacy | None = None,
) -> Report:
    """Train, then build the upload; with ``privacy``, DP-SGD and/or a clipped (noised) update."""
    privacy = privacy or DevicePrivacy()
    steps = plan_private_steps(privacy, len(data.train), train.batch_size, train.steps)
    result = train_local(
        model,
        data.train,
        task.factors,
        task.rank,
        strategy.config.scaling,
        train,
        strategy.prune,
        task.seed,
        steps,
        basis=strategy.training_basis(task.factors, task.seed),
    )
    spend = record_spend(privacy, steps, train.steps) if steps is not None else None
    contribution = strategy.contribution(task.factors, result.factors, data.num_train_examples)
    if privacy.user is not None:
        contribution, _ = private_update(contribution, privacy.user, task.component_cohorts)
    return Report(
        data.client_id,
        task.rank,
        result.rank,
        contribution,
        result.train_loss,
        data.num_train_examples,
        example_privacy=spend,
    )
