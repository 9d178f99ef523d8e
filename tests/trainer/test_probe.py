"""The device probe on the tiny model, and the pure interpolation and rank choice it feeds (goldens)."""

from __future__ import annotations

import math

import pytest

from trainer.probe import ProbeError, ProbeResult, parse_ranks, probe_device
from trainer.ranks import RankPoint, assign_measured_rank, interpolate
from trainer.targets import BUILTIN_TARGETS

pytestmark = pytest.mark.timeout(180)

# 1000 MiB + 10 MiB/rank and 1 s + 0.05 s/rank, measured at r_min = 2 and r_max = 32.
LINE = (RankPoint(2, 1000.0, 1.0), RankPoint(32, 1300.0, 2.5))


def at(points: tuple[RankPoint, ...], rank: int) -> tuple[int, float, float]:
    p = interpolate(points, rank)
    return p.rank, p.peak_memory_mb, p.step_seconds


def test_interpolation_is_linear_between_the_points_in_any_order() -> None:
    assert at(LINE, 17) == (17, 1150.0, 1.75)
    assert at(LINE[::-1], 8) == pytest.approx((8, 1060.0, 1.3))
    assert at(LINE, 32) == (32, 1300.0, 2.5)
    three = (RankPoint(16, 2000.0, 3.0), RankPoint(2, 1000.0, 1.0), RankPoint(32, 2400.0, 3.0))
    assert at(three, 9) == (9, 1500.0, 2.0)
    assert at(three, 24) == (24, 2200.0, 3.0)


def test_extrapolation_is_conservative() -> None:
    assert at(LINE, 1) == (1, 1000.0, 1.0)  # below the lowest point: its cost
    assert at(LINE, 64) == pytest.approx((64, 1620.0, 4.1))  # the last segment, extended
    cheaper_at_higher_rank = (RankPoint(2, 1000.0, 2.0), RankPoint(32, 900.0, 1.0))
    assert at(cheaper_at_higher_rank, 64) == (64, 900.0, 1.0)  # never extended downwards


@pytest.mark.parametrize("points", [(), (RankPoint(2, 1.0, 1.0),), (RankPoint(2, 1.0, 1.0), RankPoint(2, 2.0, 2.0))])
def test_interpolation_needs_two_distinct_ranks(points: tuple[RankPoint, ...]) -> None:
    with pytest.raises(ValueError, match="two points at distinct ranks"):
        interpolate(points, 4)


def test_rank_choice_goldens() -> None:
    # Usable memory is 0.8 × free: 1437.5 MiB free leaves 1150 MiB, which is rank 17's peak exactly.
    assert assign_measured_rank(LINE, 1437.5, 2, 32, step_budget_s=30.0) == 17  # memory-bound
    assert assign_measured_rank(LINE, 1e6, 2, 32, step_budget_s=1.75) == 17  # time-bound
    assert assign_measured_rank(LINE, 1437.5, 2, 32, step_budget_s=1.3) == 8  # both bind: the tighter wins
    assert assign_measured_rank(LINE, 1e6, 2, 32, step_budget_s=30.0) == 32  # both fit: r_max
    assert assign_measured_rank(LINE, 100.0, 2, 32, step_budget_s=30.0) == 2  # nothing fits: r_min, still joins
    assert assign_measured_rank(LINE, 1e6, 2, 32, step_budget_s=0.5) == 2
    assert assign_measured_rank(LINE, 1e6, 4, 16, step_budget_s=30.0) == 16  # points outside the policy's range
    assert assign_measured_rank(LINE, 1e6, 2, 64, step_budget_s=4.0) == 62  # extrapolated: 1 + 0.05 r ≤ 4


def test_rank_choice_checks_every_rank_when_points_are_not_monotone() -> None:
    bumpy = (RankPoint(2, 1000.0, 1.0), RankPoint(16, 2000.0, 1.0), RankPoint(32, 1100.0, 1.0))
    # Fits at 2..4 and again at 31..32 (2000 − 56.25·(r − 16) ≤ 1200): the largest that fits is 32.
    assert assign_measured_rank(bumpy, 1500.0, 2, 32, step_budget_s=30.0) == 32
    assert assign_measured_rank(bumpy, 1500.0, 2, 30, step_budget_s=30.0) == 4


def test_parse_ranks() -> None:
    assert parse_ranks("2,32") == (2, 32)
    assert parse_ranks(" 2, 8 ,32") == (2, 8, 32)
    for bad in ("32", "2,2", "0,4", "a,b", ""):
        with pytest.raises(ValueError, match="ranks"):
            parse_ranks(bad)


@pytest.fixture(scope="module")
def probed() -> ProbeResult:
    """Two real worker processes on the tiny model (~10 s): rank 2 and a rank far enough away to see."""
    return probe_device("tiny", BUILTIN_TARGETS, (1024, 2), batch_size=2, seq_len=16)


def test_probe_reports_sane_positive_numbers_per_rank(probed: ProbeResult) -> None:
    assert probed.device == "cpu" and probed.memory_source in ("vmhwm", "ru_maxrss")
    assert [p.rank for p in probed.points] == [2, 1024]  # measured in ascending order
    assert 0 < probed.free_memory_mb < 1e8 and 0 < probed.gflops < 1e6
    for p in probed.points:
        assert math.isfinite(p.peak_memory_mb) and math.isfinite(p.step_seconds)
        assert 100 < p.peak_memory_mb < probed.free_memory_mb  # the whole process: interpreter, torch, model
        assert 0 < p.step_seconds < 60


def test_probe_costs_grow_with_rank(probed: ProbeResult) -> None:
    from trainer.model import load_base_model
    from trainer.peft_bridge import adapted_modules

    low, high = probed.points
    shapes = adapted_modules(load_base_model("tiny"), BUILTIN_TARGETS)
    # LoRA weights, their gradients and two Adam moments: 16 bytes per parameter per rank, at least.
    lora_state_mb = 16 * sum(s.d_in + s.d_out for s in shapes.values()) * (high.rank - low.rank) / 2**20
    assert high.peak_memory_mb - low.peak_memory_mb >= lora_state_mb
    # On a model this small LoRA's share of a step is within timing noise: the step must at least not shrink
    # beyond it (catches a probe that times the wrong thing); bench/ranks.py measures the real slope.
    assert high.step_seconds >= 0.5 * low.step_seconds


def test_a_failing_worker_is_a_probe_error_naming_the_rank() -> None:
    with pytest.raises(ProbeError, match=r"rank 4: .*status 1.*match no linear layer"):
        probe_device("tiny", ("no_such_proj",), (4,), batch_size=1, seq_len=4)


def test_probe_settings_are_validated_before_any_worker_starts() -> None:
    with pytest.raises(ValueError, match="distinct positive"):
        probe_device("tiny", BUILTIN_TARGETS, (2, 2))
    with pytest.raises(ValueError, match="positive batch size"):
        probe_device("tiny", BUILTIN_TARGETS, (2, 4), batch_size=0)
