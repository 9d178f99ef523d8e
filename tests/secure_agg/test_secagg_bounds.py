"""Range checks on decoded sums: honest cohorts always pass, a liar never pushes the result past the bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import (
    BucketLayout,
    BucketSum,
    FixedPointCodec,
    RoundConfig,
    SumOutOfRangeError,
    check_sums,
    decode_sum,
    encode_weighted,
    simulate_round,
    sum_violations,
)

LAYOUT = BucketLayout((24, 16))


def _round(
    levels: list[int],
    weights: list[float],
    values: list[np.ndarray],
    liar: dict[int, np.ndarray],
    codec: FixedPointCodec,
) -> tuple[BucketSum, ...]:
    n = len(levels)
    cfg = RoundConfig(1, tuple(range(n)), tuple(levels), LAYOUT, n - 1, 2, 2)
    rng = np.random.default_rng(0)
    inputs = {c: liar.get(c, encode_weighted(values[c], weights[c], levels[c], LAYOUT, codec, rng)) for c in range(n)}
    report = simulate_round(cfg, inputs)
    assert report.result is not None
    return decode_sum(report.result.ring_sums, report.result.outcomes, LAYOUT, codec)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 2), min_size=3, max_size=8),
    st.data(),
)
def test_honest_cohorts_at_the_extremes_always_pass(levels: list[int], data: st.DataObject) -> None:
    n = len(levels)
    codec = FixedPointCodec(value_bound=2.0, weight_bound=3.0, max_clients=n)
    weights = data.draw(st.lists(st.sampled_from([0.0, 3.0, 1e9, 0.5]), min_size=n, max_size=n))
    extremes = st.sampled_from([-1e9, -2.0, 0.0, 2.0, 1e9])
    values = [np.array(data.draw(st.lists(extremes, min_size=40, max_size=40))) for _ in range(n)]
    sums = _round(levels, weights, values, {}, codec)
    assert sum_violations(sums, codec) == ()


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 8), st.data())
def test_a_lying_device_never_gets_past_the_clip_bound_times_the_cohort(n: int, data: st.DataObject) -> None:
    """Whatever ring values one device sends, a result that passes the check is within c · W per element."""
    codec = FixedPointCodec(value_bound=2.0, weight_bound=1.0, max_clients=n)
    levels = [2] * n
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = [rng.uniform(-3, 3, LAYOUT.dim) for _ in range(n)]
    kind = data.draw(st.sampled_from(["uniform", "large", "in_range", "one_element"]))
    total = LAYOUT.total
    if kind == "uniform":
        lie = rng.integers(0, 2**32, total, dtype=np.uint64).astype(np.uint32)
    elif kind == "large":
        lie = np.full(total, data.draw(st.integers(0, 2**32 - 1)), dtype=np.uint32)
    elif kind == "in_range":
        lie = (rng.integers(-(2**20), 2**20, total) * int(codec.value_scale) >> 20).astype(np.int32).view(np.uint32)
    else:
        lie = encode_weighted(values[0], 1.0, 2, LAYOUT, codec, rng)
        lie[data.draw(st.integers(0, total - 1))] = np.uint32(data.draw(st.integers(0, 2**32 - 1)))
    sums = _round(levels, [1.0] * n, values, {0: lie}, codec)
    try:
        check_sums(sums, codec)
    except SumOutOfRangeError as exc:
        assert exc.buckets
        return
    for b in sums:
        assert b.weighted_sum is not None and b.weight_sum is not None
        assert 0 <= b.weight_sum <= n * codec.weight_bound + n / codec.weight_scale
        limit = codec.value_bound * codec.weight_bound * n + 2 * n / codec.value_scale
        assert float(np.abs(b.weighted_sum).max()) <= limit


def test_random_ring_values_from_one_device_are_caught() -> None:
    codec = FixedPointCodec(value_bound=2.0, weight_bound=1.0, max_clients=6)
    rng = np.random.default_rng(5)
    values = [rng.uniform(-1, 1, LAYOUT.dim) for _ in range(6)]
    lie = rng.integers(0, 2**32, LAYOUT.total, dtype=np.uint64).astype(np.uint32)
    sums = _round([2] * 6, [1.0] * 6, values, {3: lie}, codec)
    with pytest.raises(SumOutOfRangeError, match="bucket 0") as caught:
        check_sums(sums, codec)
    assert caught.value.buckets == (0, 1)
