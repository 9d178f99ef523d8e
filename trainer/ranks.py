"""Which LoRA rank a device gets: from its profile in production, from a distribution in experiments.

A device's rank is the largest one whose training fits its memory and whose local step fits the round's
time budget, clamped to [r_min, r_max]. Two ways to know what a rank costs: points the device measured on the
job's own model (``hetlora device enroll --probe``, trainer/probe.py), interpolated per rank, or, when an
operator types a profile by hand, a linear cost model fitted once to SmolLM2. Experiments use FlexLoRA's four
resource tiers and their sampling probabilities (spec §2.3), mapped onto [r_min, r_max], plus the
uniform-integer draw of the reference run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


@dataclass(frozen=True)
class RankPoint:
    """What one local step cost at ``rank``: the process's peak memory (MiB) and the step's wall time (s)."""

    rank: int
    peak_memory_mb: float
    step_seconds: float


def interpolate(points: Sequence[RankPoint], rank: int) -> RankPoint:
    """The cost at ``rank``, piecewise linear through the measured points (any order, distinct ranks).

    LoRA adds r·(d_in + d_out) weights per layer plus their grads, Adam moments and the r-wide activations, so
    both costs are affine in r and two measurements pin them down; more points just make it piecewise.
    Outside the measured ranks the estimate is conservative: below the lowest it is the lowest point's cost,
    above the highest the last segment is extended but never downwards (a measurement that happened to be
    cheaper at a higher rank must not make ranks beyond it look free).
    """
    pts = sorted(points, key=lambda p: p.rank)
    if len(pts) < 2 or len({p.rank for p in pts}) != len(pts):
        raise ValueError(f"need at least two points at distinct ranks, got ranks {[p.rank for p in pts]}")
    if rank <= pts[0].rank:
        return RankPoint(rank, pts[0].peak_memory_mb, pts[0].step_seconds)
    hi = next((i for i, p in enumerate(pts) if p.rank >= rank), len(pts) - 1)
    a, b = pts[hi - 1], pts[hi]
    t = (rank - a.rank) / (b.rank - a.rank)
    if rank > b.rank:  # beyond the highest measurement: extend the last segment, never downwards
        return RankPoint(
            rank,
            b.peak_memory_mb + max(0.0, b.peak_memory_mb - a.peak_memory_mb) * (t - 1),
            b.step_seconds + max(0.0, b.step_seconds - a.step_seconds) * (t - 1),
        )
    return RankPoint(
        rank,
        a.peak_memory_mb + t * (b.peak_memory_mb - a.peak_memory_mb),
        a.step_seconds + t * (b.step_seconds - a.step_seconds),
    )


def fits(point: RankPoint, free_memory_mb: float, step_budget_s: float, memory_fraction: float) -> bool:
    """Whether a rank's cost leaves the safety margin free and its step meets the round's budget."""
    return point.peak_memory_mb <= free_memory_mb * memory_fraction and point.step_seconds <= step_budget_s


def assign_measured_rank(
    points: Sequence[RankPoint],
    free_memory_mb: float,
    r_min: int,
    r_max: int,
    step_budget_s: float,
    memory_fraction: float = 0.8,
) -> int:
    """Largest rank in [r_min, r_max] whose interpolated cost fits; r_min when none does (the device still joins).

    Every rank is checked, not just up to the first that fails: measurements need not be monotone in rank
    (timing noise), and a rank that fits beyond one that does not is still a rank that fits.
    ``memory_fraction`` of the free memory is usable: the rest absorbs what the probe's few steps did not see
    (other apps, allocator fragmentation, the data pipeline).
    """
    if not 1 <= r_min <= r_max:
        raise ValueError(f"need 1 ≤ r_min ≤ r_max, got {r_min}, {r_max}")
    if not 0 < memory_fraction <= 1 or step_budget_s <= 0:
        raise ValueError(f"need 0 < memory_fraction ≤ 1 and a positive budget, got {memory_fraction}, {step_budget_s}")
    fitting = [
        r
        for r in range(r_min, r_max + 1)
        if fits(interpolate(points, r), free_memory_mb, step_budget_s, memory_fraction)
    ]
    return max(fitting, default=r_min)


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
