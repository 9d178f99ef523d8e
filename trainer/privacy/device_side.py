"""A device's privacy work in a round: DP-SGD settings from its data size, its own ledger, and the clipped
(and, under distributed DP, noised) update. Called by ``trainer.device.run_task`` for the simulation and the
device agent alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from trainer.local_train import PrivateSteps
from trainer.privacy.accounting import PrivacyLedger
from trainer.privacy.settings import ExampleDP, UserDP
from trainer.privacy.user_dp import add_distributed_noise, clip_update
from trainer.strategies.base import Contribution


class BudgetExhaustedError(RuntimeError):
    """The device's example-level budget would be exceeded by another round: it stops training."""


@dataclass
class DevicePrivacy:
    """What a device applies: example-level DP (with its persistent ledger) and/or the deployment's user DP."""

    example: ExampleDP | None = None
    user: UserDP | None = None
    ledger: PrivacyLedger | None = None  # example-level, the device's own; created on first use

    def __post_init__(self) -> None:
        if self.example is not None and self.ledger is None:
            self.ledger = PrivacyLedger(self.example.delta, self.example.accountant)


@dataclass(frozen=True)
class ExampleSpend:
    """What one round of DP-SGD cost this device (reported with its update, recorded with the round)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float  # cumulative over every round this device trained in, at ``delta``
    delta: float
    accountant: str
    unit: str = field(default="example")


def plan_private_steps(privacy: DevicePrivacy, num_blocks: int, batch_size: int, steps: int) -> PrivateSteps | None:
    """This round's DP-SGD settings, or None without example-level DP; refuses a round past the target ε."""
    dp, ledger = privacy.example, privacy.ledger
    if dp is None or ledger is None:
        return None
    q = min(1.0, batch_size / num_blocks)
    sigma = dp.noise(q, steps)
    if dp.target_epsilon is not None and ledger.epsilon_after(sigma, q, steps) > dp.target_epsilon * 1.001:
        raise BudgetExhaustedError(
            f"example-level budget ε={dp.target_epsilon} (δ={dp.delta}) spent: ε={ledger.epsilon():.3f} after "
            f"{sum(h[2] for h in ledger.history)} DP-SGD steps; this device trains no more"
        )
    return PrivateSteps(sigma, dp.clip, q)


def record_spend(privacy: DevicePrivacy, steps: PrivateSteps, num_steps: int) -> ExampleSpend:
    ledger = privacy.ledger
    assert ledger is not None
    if steps.noise_multiplier > 0:
        ledger.spend(steps.noise_multiplier, steps.sample_rate, num_steps)
        epsilon = ledger.epsilon()
    else:
        epsilon = math.inf  # σ = 0: no guarantee at all (the setting exists for testing equivalence)
    return ExampleSpend(steps.noise_multiplier, steps.sample_rate, num_steps, epsilon, ledger.delta, ledger.accountant)


def private_update(
    update: Contribution, user: UserDP, cohorts: tuple[int, ...], rng: np.random.Generator | None = None
) -> tuple[Contribution, float]:
    """The update clipped to the public bound, plus this device's noise share under distributed DP.

    Returns it with the norm before clipping (for the device's own logs: how often clipping bites).
    """
    clipped, norm = clip_update(update, user.clip_norm)
    if user.mode == "distributed" and user.noise_multiplier > 0:
        if not cohorts:
            raise ValueError("distributed DP needs the per-component cohort sizes in the task")
        generator = rng if rng is not None else np.random.default_rng()  # fresh OS entropy: unknown to the server
        clipped = add_distributed_noise(clipped, user.noise_std, np.asarray(cohorts), generator)
    return clipped, norm
