"""Fixed-point encoding, weighted bucket encoding and the cohort threshold rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg.buckets import (
    BucketLayout,
    BucketStatus,
    bucket_outcomes,
    decode_sum,
    encode_weighted,
    level_for_rank,
)
from secure_agg.encoding import FixedPointCodec, decode_values, encode_values
from secure_agg.errors import ConfigError


def test_scales_are_powers_of_two_that_cannot_overflow() -> None:
    codec = FixedPointCodec(value_bound=8.0, weight_bound=1.0, max_clients=1024)
    assert codec.value_scale == 2.0**16  # 2^17 would fit int32; one bit is kept as headroom
    worst = codec.max_clients * (codec.value_bound * codec.value_scale + 1)
    assert worst <= 2**30 - 1
    assert FixedPointCodec(8.0, 1.0, 1024, headroom_bits=0).value_scale == 2.0**17
    with pytest.raises(ConfigError):
        FixedPointCodec(value_bound=1e9, weight_bound=1e3, max_clients=1000)


def test_extreme_values_sum_without_wrapping() -> None:
    codec = FixedPointCodec(value_bound=8.0, weight_bound=1.0, max_clients=64)
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):
        x = np.full(16, sign * 100.0)
        total = sum(encode_values(x, codec.value_scale, 8.0, rng) for _ in range(64))
        assert np.allclose(decode_values(np.asarray(total, dtype=np.uint32), codec.value_scale), sign * 8 * 64)


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.3)
    coded = encode_values(x, 1.0, 8.0, rng)
    assert abs(coded.view(np.int32).mean() - 0.3) < 0.01


def test_nan_is_rejected() -> None:
    with pytest.raises(ValueError):
        encode_values(np.array([np.nan]), 1.0, 1.0, np.random.default_rng())


def test_layout_regions_and_rank_edges() -> None:
    layout = BucketLayout.for_rank_edges([0, 2, 4, 8], component_size=10)
    assert layout.sizes == (20, 20, 40)
    assert layout.total == 83
    assert layout.region(0) == slice(0, 21) and layout.region(2) == slice(42, 83)
    assert layout.input_slice(1) == slice(20, 40)
    assert level_for_rank(4, [0, 2, 4, 8]) == 2
    with pytest.raises(ConfigError):
        level_for_rank(3, [0, 2, 4, 8])
    with pytest.raises(ConfigError):
        BucketLayout.for_rank_edges([1, 2], 3)


def test_encode_weighted_uploads_only_the_buckets_below_the_level() -> None:
    layout = BucketLayout((3, 2, 4))
    codec = FixedPointCodec(4.0, 2.0, 8)
    out = encode_weighted(np.ones(9), 1.5, 2, layout, codec, np.random.default_rng(0))
    assert out.shape == (layout.prefix(2),) == (layout.region(1).stop,) == (7,)
    assert out[0] == out[4] == int(1.5 * codec.weight_scale)
    assert np.all(out[1:4].view(np.int32) == int(1.5 * codec.value_scale))
    assert encode_weighted(np.ones(9), 1.0, 0, layout, codec).shape == (0,)
    assert encode_weighted(np.ones(9), 1.0, 3, layout, codec).shape == (layout.total,)
    with pytest.raises(ConfigError):
        encode_weighted(np.ones(8), 1.0, 1, layout, codec)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=2, max_size=12),
    st.lists(st.floats(0, 10), min_size=12, max_size=12),
    st.integers(0, 2**32 - 1),
)
def test_weighted_bucket_sums_match_plain_sums(levels: list[int], weights: list[float], seed: int) -> None:
    layout = BucketLayout((5, 3, 2))
    codec = FixedPointCodec(value_bound=2.0, weight_bound=5.0, max_clients=len(levels))
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-3, 3, layout.dim).astype(np.float32).astype(np.float64) for _ in levels]
    total = np.zeros(layout.total, dtype=np.uint32)
    for x, w, lv in zip(xs, weights, levels, strict=False):
        upload = encode_weighted(x, w, lv, layout, codec, rng)
        total[: upload.shape[0]] += upload
    outcomes = bucket_outcomes(3, dict(enumerate(levels)), range(len(levels)), min_cohort=1)
    sums = decode_sum({j: total[layout.region(j)] for j in range(3)}, outcomes, layout, codec)
    for j, b in enumerate(sums):
        cohort = [i for i, lv in enumerate(levels) if lv > j]
        if not cohort:
            assert b.outcome.status != BucketStatus.UNMASKED
            continue
        ws = [min(weights[i], 5.0) for i in cohort]
        plain = sum(w * np.clip(xs[i][layout.input_slice(j)], -2, 2) for i, w in zip(cohort, ws, strict=True))
        assert b.weighted_sum is not None and b.weight_sum is not None
        # quantisation bound plus the float32 rounding of the decoded value
        bound = codec.sum_error_bound(len(levels)) + np.abs(plain) * 2.0**-23
        assert np.all(np.abs(b.weighted_sum - plain) <= bound)
        assert abs(b.weight_sum - sum(ws)) <= len(levels) / codec.weight_scale


def test_bucket_outcomes_merge_and_drop() -> None:
    levels = {0: 3, 1: 3, 2: 2, 3: 1, 4: 1, 5: 1}
    out = bucket_outcomes(3, levels, range(6), min_cohort=3)
    assert [o.status for o in out] == [BucketStatus.UNMASKED, BucketStatus.UNMASKED, BucketStatus.MERGED]
    assert [o.cohort for o in out] == [6, 3, 2] and out[2].merged_into == 1
    out = bucket_outcomes(3, levels, [0, 3], min_cohort=3)
    assert all(o.status == BucketStatus.DROPPED for o in out)
