"""Per-deployment DP settings: example-level (DP-SGD on each device) and user-level (DP-FedAvg).

Both validate on construction so a bad setting fails when the deployment starts, with a message that names
the fix, not in the middle of a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.privacy.accounting import ACCOUNTANTS, noise_for_target

NO_CLIP = 1e30  # "clip = ∞": Opacus computes noise std as σ·C, so ∞ itself would give NaN even at σ = 0


@dataclass(frozen=True)
class ExampleDP:
    """DP-SGD on a device's LoRA parameters: Poisson-sampled blocks, per-example clipping, Gaussian noise.

    Give ``noise_multiplier``, or ``target_epsilon`` to have it derived for ``rounds_horizon`` participations
    of ``steps`` local steps each (the device's accountant then reaches the target after that many rounds).
    """

    max_grad_norm: float
    delta: float = 1e-6
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    accountant: str = "prv"
    rounds_horizon: int = 30

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("example-level DP needs exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be ≥ 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError(f"target_epsilon must be positive, got {self.target_epsilon}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive (∞ for no clipping), got {self.max_grad_norm}")
        if math.isinf(self.max_grad_norm) and (self.noise_multiplier or 0) > 0:
            raise ValueError("noise is σ·max_grad_norm: with max_grad_norm = ∞ only σ = 0 makes sense")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not 0 < self.delta < 1 or self.rounds_horizon < 1:
            raise ValueError(f"need 0 < delta < 1 and rounds_horizon ≥ 1, got {self.delta}, {self.rounds_horizon}")

    @property
    def clip(self) -> float:
        return NO_CLIP if math.isinf(self.max_grad_norm) else self.max_grad_norm

    def noise(self, sample_rate: float, steps_per_round: int) -> float:
        """σ for this device: as configured, or the smallest σ that keeps the horizon within the target ε."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None
        total = steps_per_round * self.rounds_horizon
        return noise_for_target(self.target_epsilon, self.delta, sample_rate, total, self.accountant)


@dataclass(frozen=True)
class UserDP:
    """DP-FedAvg: each device's update (its whole adapter delta) clipped to ``clip_norm``, Gaussian noise of
    std ``noise_multiplier · clip_norm`` on every released sum, added at the orchestrator (``central``) or in
    shares by the devices before masking (``distributed``, so the orchestrator never sees a noiseless sum).
    The orchestrator refuses a round that would take the federation past ``epsilon_budget``.
    """

    clip_norm: float
    noise_multiplier: float
    delta: float = 1e-6
    epsilon_budget: float = math.inf
    mode: str = "distributed"
    accountant: str = "prv"
    # Distributed mode: devices over-provision their noise shares so that the sums still carry σS when up to
    # this fraction of a component's devices drop out; the budget check then holds for such rounds.
    dropout_tolerance: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.dropout_tolerance < 1:
            raise ValueError(f"dropout_tolerance must be in [0, 1), got {self.dropout_tolerance}")
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ValueError(f"user-level DP needs a finite positive clip_norm, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be ≥ 0, got {self.noise_multiplier}")
        if self.mode not in ("central", "distributed"):
            raise ValueError(f"mode must be 'central' or 'distributed', got {self.mode!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not 0 < self.delta < 1 or not self.epsilon_budget > 0:
            raise ValueError(f"need 0 < delta < 1 and a positive budget, got {self.delta}, {self.epsilon_budget}")

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on each coordinate of a released sum."""
        return self.noise_multiplier * self.clip_norm
