"""User-level DP-FedAvg arithmetic: clipping bounds, noise calibration per component, effective σ."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.factors import LoraFactors
from trainer.lora_math import component_sums
from trainer.privacy.user_dp import (
    add_central_noise,
    add_distributed_noise,
    clip_update,
    component_cohorts,
    effective_noise_multiplier,
    noise_cohorts,
    update_norm,
    value_headroom,
)
from trainer.strategies.base import AggregateSums, Contribution, sum_contributions


def update(rank: int, scale: float, seed: int = 0) -> Contribution:
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> np.ndarray:
        return rng.normal(0, scale, shape).astype(np.float32)

    factors = {"q": LoraFactors(draw(6, rank), draw(rank, 5)), "v": LoraFactors(draw(4, rank), draw(rank, 5))}
    return Contribution(weight={"q": 123.0, "v": 123.0}, factors=factors)


def test_golden_clip_of_a_known_vector() -> None:
    # one module, B = [[3]], A = [[4]]: norm 5; clipped to 1 it is (0.6, 0.8)
    c = Contribution(weight={"m": 7.0}, factors={"m": LoraFactors(np.array([[3.0]]), np.array([[4.0]]))})
    clipped, norm = clip_update(c, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped.factors["m"].B, [[0.6]])
    np.testing.assert_allclose(clipped.factors["m"].A, [[0.8]])
    assert clipped.weight == {"m": 1.0}  # DP-FedAvg: every device counts once, whatever its data size


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.floats(1e-4, 10.0), st.floats(0.01, 5.0))
def test_clipped_updates_never_exceed_the_bound_and_small_ones_are_untouched(
    rank: int, scale: float, clip: float
) -> None:
    c = update(rank, scale)
    clipped, norm = clip_update(c, clip)
    assert update_norm(clipped) <= clip * (1 + 1e-5)
    if norm <= clip:
        for m in c.factors:
            np.testing.assert_allclose(clipped.factors[m].B, c.factors[m].B)


def test_component_cohorts_count_devices_covering_each_component() -> None:
    assert component_cohorts([2, 4, 4, 8], 8).tolist() == [4, 4, 3, 3, 1, 1, 1, 1]


def test_distributed_noise_shares_add_up_to_the_central_noise() -> None:
    ranks, std = [2, 4, 4, 8], 0.5
    cohorts = component_cohorts(ranks, 8)
    rng = np.random.default_rng(1)
    zero = {r: Contribution({"q": 1.0}, {"q": LoraFactors(np.zeros((3000, r)), np.zeros((r, 2)))}) for r in set(ranks)}
    noisy = [add_distributed_noise(zero[r], std, cohorts, rng) for r in ranks]
    sums = sum_contributions(noisy, 8).factor_sums["q"]
    # every column of the summed B carries std ≈ 0.5, however many devices covered it
    np.testing.assert_allclose(sums.B.std(axis=0), std, rtol=0.1)
    np.testing.assert_array_equal(sums.weight, cohorts)


def test_central_noise_touches_only_released_components() -> None:
    s = component_sums([LoraFactors(np.zeros((4, 2)), np.zeros((2, 3)))], [1.0], 4)
    noisy = add_central_noise(AggregateSums({"q": s}, {}, {}, 1), 1.0, np.random.default_rng(0)).factor_sums["q"]
    assert np.all(noisy.B[:, :2] != 0) and np.all(noisy.B[:, 2:] == 0) and np.all(noisy.A[2:] == 0)
    np.testing.assert_array_equal(noisy.weight, s.weight)  # counts are public: never noised


def test_effective_sigma_is_set_by_the_least_noised_released_component() -> None:
    planned = np.array([4, 4, 2, 1, 0])
    assert effective_noise_multiplier(1.0, planned, planned) == 1.0
    # one of two devices covering component 2 dropped: that component carries σ·√(1/2)
    assert effective_noise_multiplier(1.0, planned, np.array([3, 3, 1, 1, 0])) == pytest.approx(np.sqrt(0.5))
    # a component nobody uploaded releases nothing and does not lower σ
    assert effective_noise_multiplier(2.0, planned, np.array([4, 4, 2, 0, 0])) == 2.0
    # over-provisioned shares: fewer drops than tolerated leave more noise than σS
    assert effective_noise_multiplier(1.0, np.array([3, 3, 1]), np.array([4, 4, 1])) == pytest.approx(1.0)
    assert effective_noise_multiplier(1.0, np.array([3, 3, 1]), np.array([4, 4, 2])) == pytest.approx(np.sqrt(4 / 3))
    with pytest.raises(ValueError, match="no device was asked"):
        effective_noise_multiplier(1.0, np.array([2, 0]), np.array([2, 1]))


def test_noise_shares_leave_room_for_the_tolerated_dropout() -> None:
    planned = np.array([5, 4, 3, 1, 0])
    assert noise_cohorts(planned, 0.0).tolist() == [5, 4, 3, 1, 0]
    assert noise_cohorts(planned, 0.2).tolist() == [4, 3, 2, 1, 0]  # ⌊n·0.8⌋, never below 1 where planned
    # while no more than the tolerated fraction drops, every released component keeps at least σS
    shares = noise_cohorts(planned, 0.2)
    survivors = planned - np.floor(planned * 0.2).astype(int)
    assert effective_noise_multiplier(1.0, shares, survivors) >= 1.0


def test_headroom_leaves_room_for_four_standard_deviations_of_a_share() -> None:
    assert value_headroom(1.0, 2.0, 4) == pytest.approx(1.0 + 4 * 2.0 / 2)
