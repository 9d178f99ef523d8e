"""Which LoRA rank a device gets: from its profile in production, from a distribution in experiments.

A device's rank is the largest one whose training fits its memory and whose local step fits the round's
time budget, clamped to [r_min, r_max]. Experiments use FlexLoRA's four resource tiers and their sampling
probabilities (spec §2.3), mapped onto [r_min, r_max], plus the uniform-integer draw of the reference run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DeviceProfile:
    """What a device reports at enrollment: free memory for training and sustained fp32 throughput."""

    memory_mb: float
    gflops: float

    def __post_init__(self) -> None:
        if self.memory_mb <= 0 or self.gflops <= 0:
            raise ValueError(f"device profile needs positive memory and throughput, got {self}")


@dataclass(frozen=True)
class TrainingCost:
    """Cost model of one local step as a function of rank (fit it to the deployed base model).

    memory = base_mb + rank · mb_per_rank (LoRA weights, grads, two Adam moments, their activations);
    step time = (base_gflop + rank · gflop_per_rank) / throughput, which must fit ``step_budget_s``.
    The defaults describe SmolLM2-135M, LoRA on q/k/v/o, batch 4 × 64 tokens.
    """

    base_mb: float = 1500.0
    mb_per_rank: float = 2.0
    base_gflop: float = 170.0
    gflop_per_rank: float = 0.6
    step_budget_s: float = 5.0


def assign_rank(profile: DeviceProfile, r_min: int, r_max: int, cost: TrainingCost | None = None) -> int:
    """Largest rank in [r_min, r_max] that fits; r_min when even that does not (the device still joins)."""
    if not 1 <= r_min <= r_max:
        raise ValueError(f"need 1 ≤ r_min ≤ r_max, got {r_min}, {r_max}")
    c = cost or TrainingCost()
    by_memory = (profile.memory_mb - c.base_mb) / c.mb_per_rank
    by_time = (profile.gflops * c.step_budget_s - c.base_gflop) / c.gflop_per_rank
    fit = math.floor(min(by_memory, by_time))
    return int(min(r_max, max(r_min, fit)))


# FlexLoRA's resource distributions over four tiers, ordered from weakest to strongest device
# (code types 0, 3, 2, 1; spec §2.3). "normal" is pdf_N(1.5, 0.7²) at the code's type index, renormalised.
TIER_DISTRIBUTIONS: dict[str, tuple[float, float, float, float]] = {
    "uniform": (0.25, 0.25, 0.25, 0.25),
    "heavy_tail_light": (0.80, 0.05, 0.05, 0.10),
    "heavy_tail_strong": (0.05, 0.05, 0.10, 0.80),
    "normal": (0.057492, 0.057492, 0.442508, 0.442508),
}
RANK_DISTRIBUTIONS = ("uniform_int", "homogeneous_min", "homogeneous_max", *TIER_DISTRIBUTIONS)


def tier_ranks(r_min: int, r_max: int) -> tuple[int, int, int, int]:
    """Four geometrically spaced ranks from r_min to r_max (FlexLoRA's 8 / 30 / 30+200 / 200 tiers)."""
    pts = np.geomspace(r_min, r_max, 4)
    t0, t1, t2, t3 = (round(float(x)) for x in pts)
    return t0, t1, t2, t3


def sample_ranks(distribution: str, n: int, r_min: int, r_max: int, seed: int) -> list[int]:
    """Ranks for n simulated devices, deterministic in the seed."""
    rng = np.random.default_rng(seed)
    if distribution == "uniform_int":
        return [int(x) for x in rng.integers(r_min, r_max + 1, size=n)]
    if distribution == "homogeneous_min":
        return [r_min] * n
    if distribution == "homogeneous_max":
        return [r_max] * n
    if distribution not in TIER_DISTRIBUTIONS:
        raise ValueError(f"unknown rank distribution {distribution!r}; choose from {', '.join(RANK_DISTRIBUTIONS)}")
    tiers = tier_ranks(r_min, r_max)
    picks = rng.choice(4, size=n, p=np.asarray(TIER_DISTRIBUTIONS[distribution]))
    return [tiers[int(i)] for i in picks]
