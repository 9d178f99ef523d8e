"""Rank assignment from device profiles and FlexLoRA's simulation distributions."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.ranks import TIER_DISTRIBUTIONS, DeviceProfile, TrainingCost, assign_rank, sample_ranks, tier_ranks


def test_assign_rank_takes_the_tighter_of_memory_and_time() -> None:
    cost = TrainingCost(base_mb=1000, mb_per_rank=10, base_gflop=100, gflop_per_rank=1, step_budget_s=2)
    assert assign_rank(DeviceProfile(memory_mb=1200, gflops=1000), 2, 64, cost) == 20  # memory-bound
    assert assign_rank(DeviceProfile(memory_mb=9000, gflops=60), 2, 64, cost) == 20  # time-bound
    assert assign_rank(DeviceProfile(memory_mb=100, gflops=1), 2, 64, cost) == 2  # floor: still joins
    assert assign_rank(DeviceProfile(memory_mb=1e6, gflops=1e6), 2, 64, cost) == 64


@given(mem=st.floats(1, 1e6), gf=st.floats(0.1, 1e5), r_min=st.integers(1, 8), span=st.integers(0, 64))
def test_assigned_rank_is_clamped_and_monotone(mem: float, gf: float, r_min: int, span: int) -> None:
    r_max = r_min + span
    r = assign_rank(DeviceProfile(mem, gf), r_min, r_max)
    assert r_min <= r <= r_max
    assert assign_rank(DeviceProfile(mem * 2, gf * 2), r_min, r_max) >= r


def test_profile_validation() -> None:
    with pytest.raises(ValueError):
        DeviceProfile(memory_mb=0, gflops=1)


def test_tier_distributions_match_flexlora_code() -> None:
    assert tier_ranks(2, 32) == (2, 5, 13, 32)
    for p in TIER_DISTRIBUTIONS.values():
        assert sum(p) == pytest.approx(1.0, abs=1e-6)
    counts = Counter(sample_ranks("heavy_tail_light", 4000, 2, 32, seed=0))
    assert counts[2] / 4000 == pytest.approx(0.80, abs=0.03)
    counts = Counter(sample_ranks("normal", 4000, 2, 32, seed=0))
    assert (counts[13] + counts[32]) / 4000 == pytest.approx(0.885, abs=0.03)


def test_sampling_is_seeded_and_validated() -> None:
    assert sample_ranks("uniform_int", 10, 2, 32, 1) == sample_ranks("uniform_int", 10, 2, 32, 1)
    assert set(sample_ranks("uniform_int", 500, 2, 32, 1)) == set(range(2, 33))
    assert sample_ranks("homogeneous_max", 3, 2, 32, 0) == [32, 32, 32]
    with pytest.raises(ValueError, match="choose from"):
        sample_ranks("zipf", 3, 2, 32, 0)


def test_normal_distribution_golden_from_flexlora_code() -> None:
    import math

    pdf = [math.exp(-((i - 1.5) ** 2) / (2 * 0.7**2)) for i in range(4)]  # code types 0..3
    p = [x / sum(pdf) for x in pdf]
    assert p == pytest.approx([0.057492, 0.442508, 0.442508, 0.057492], abs=1e-6)
    # Tiers weakest→strongest are code types 0 (r=8), 3 (r=30), 2 (30/200), 1 (r=200).
    assert TIER_DISTRIBUTIONS["normal"] == pytest.approx((p[0], p[3], p[2], p[1]), abs=1e-6)
