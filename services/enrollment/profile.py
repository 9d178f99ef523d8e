"""A device's reported profile, checked number by number, and the rank the service gives it.

The rank is the service's decision, never the device's: a device reports what it measured (``hetlora device
enroll --probe``: peak memory and step time at a few ranks, plus its free memory) or an operator types its
memory and throughput, and the policy here turns either into a rank in [r_min, r_max]. Every number arrives
from an unauthenticated peer, so each one is checked (finite, positive, below a bound that catches unit
mistakes) and a bad one is INVALID_ARGUMENT naming its field, e.g. ``profile.measured[1].step_seconds``.
Nothing assumes the points are monotone in rank: timing noise on a busy device can make a higher rank look
faster, and the rank choice checks every rank rather than stopping at the first that does not fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from services import errors
from trainer.ranks import DeviceProfile, RankPoint, TrainingCost, assign_measured_rank, assign_rank

MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB: anything larger is a unit mistake
MAX_GFLOPS = 1e7
MAX_STEP_SECONDS = 24 * 3600.0  # one step a day is no device for federated rounds
MAX_RANK = 4096
MAX_POINTS = 16


@dataclass(frozen=True)
class RankPolicy:
    """How the service maps profiles to ranks.

    ``step_budget_s`` bounds a measured step (the round's time budget for one local step); ``memory_fraction``
    of the free memory a device reported is usable, the rest is the safety margin. ``cost`` is the fixed cost
    model for hand-typed profiles (it keeps its own budget, in ideal-FLOP seconds rather than measured ones).
    """

    r_min: int = 2
    r_max: int = 32
    step_budget_s: float = 30.0
    memory_fraction: float = 0.8
    cost: TrainingCost = field(default_factory=TrainingCost)

    def __post_init__(self) -> None:
        if not 1 <= self.r_min <= self.r_max <= MAX_RANK:
            raise ValueError(f"need 1 ≤ r_min ≤ r_max ≤ {MAX_RANK}, got {self.r_min}, {self.r_max}")
        if not math.isfinite(self.step_budget_s) or self.step_budget_s <= 0:
            raise ValueError(f"the step-time budget must be a positive number of seconds, got {self.step_budget_s}")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")

    def rank(self, profile: DeviceProfile, measured: Sequence[RankPoint]) -> int:
        """Measured points decide when there are any; otherwise the cost model reads memory and throughput."""
        if measured:
            return assign_measured_rank(
                measured, profile.memory_mb, self.r_min, self.r_max, self.step_budget_s, self.memory_fraction
            )
        return assign_rank(profile, self.r_min, self.r_max, self.cost)


def _number(name: str, value: float, bound: float) -> float:
    if not math.isfinite(value) or not 0 < value <= bound:
        raise errors.invalid(name, f"must be a positive number up to {bound:g}, got {value!r}")
    return float(value)


def checked_profile(memory_mb: float, gflops: float) -> DeviceProfile:
    """The free memory and throughput every profile carries (measured by the probe, or typed)."""
    return DeviceProfile(
        _number("profile.memory_mb", memory_mb, MAX_MEMORY_MB), _number("profile.gflops", gflops, MAX_GFLOPS)
    )


def checked_points(measured: Sequence[tuple[int, float, float]]) -> tuple[RankPoint, ...]:
    """(rank, peak MiB, step seconds) triples as reported; empty means the profile was typed by hand."""
    if not measured:
        return ()
    if len(measured) > MAX_POINTS:
        raise errors.invalid("profile.measured", f"at most {MAX_POINTS} points, got {len(measured)}")
    points: list[RankPoint] = []
    for i, (rank, peak, seconds) in enumerate(measured):
        where = f"profile.measured[{i}]"
        if not 1 <= rank <= MAX_RANK:
            raise errors.invalid(f"{where}.rank", f"must be a LoRA rank in [1, {MAX_RANK}], got {rank}")
        if any(p.rank == rank for p in points):
            raise errors.invalid(f"{where}.rank", f"rank {rank} is measured twice")
        points.append(
            RankPoint(
                rank,
                _number(f"{where}.peak_memory_mb", peak, MAX_MEMORY_MB),
                _number(f"{where}.step_seconds", seconds, MAX_STEP_SECONDS),
            )
        )
    if len(points) < 2:
        raise errors.invalid("profile.measured", "needs points at two or more distinct ranks to interpolate")
    return tuple(points)
