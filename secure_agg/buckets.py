"""Rank buckets: one contiguous region per bucket, its own cohort, and the cohort threshold rule.

The LoRA core lays a client's update out by rank component, so bucket j (rank components [e_j, e_{j+1}) of
every module) is one contiguous slice. The masked vector prefixes each slice with one weight slot:

    region j = [ s_k , s_k · x_k[bucket j] ]      (zeros when the client's rank does not reach bucket j)

A client of level L (it trains buckets 0..L−1) uploads regions 0..L−1 only: one prefix of the vector, so its
upload is proportional to its rank. Each bucket is masked by its own cohort's graph (see
:mod:`secure_agg.cohorts`), and each region has its own self-mask seed, so the server can unmask some
regions and leave the others masked for ever.

Bucket j is unmasked only if its surviving cohort (survivors with level > j) is at least ``min_cohort``.
Otherwise it is never unmasked and the result says which fallback applies: ``MERGED`` into the nearest lower
bucket that was unmasked (its clients are counted there at that bucket's rank; components above it keep the
previous global values), or ``DROPPED`` when no lower bucket qualifies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from secure_agg.encoding import FixedPointCodec, decode_values, encode_values, stochastic_round
from secure_agg.errors import ConfigError


@dataclass(frozen=True)
class BucketLayout:
    """Sizes (float elements) of the rank buckets, in rank order; region j = 1 weight slot + sizes[j]."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 0 for s in self.sizes):
            raise ConfigError(f"a layout needs at least one bucket and non-negative sizes, got {self.sizes}")

    @staticmethod
    def single(dim: int) -> BucketLayout:
        """One bucket: plain (weighted) secure sum of a dim-long vector."""
        return BucketLayout((dim,))

    @staticmethod
    def for_rank_edges(edges: Sequence[int], component_size: int) -> BucketLayout:
        """Buckets [edges[j], edges[j+1]) of rank components, each component ``component_size`` floats."""
        if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ConfigError(f"rank edges must start at 0 and increase strictly, got {list(edges)}")
        return BucketLayout(tuple((b - a) * component_size for a, b in itertools.pairwise(edges)))

    @property
    def n_buckets(self) -> int:
        return len(self.sizes)

    @property
    def dim(self) -> int:
        """Length of the float input (all buckets, no weight slots)."""
        return sum(self.sizes)

    @property
    def total(self) -> int:
        """Length of the masked uint32 vector (weight slots included)."""
        return self.dim + self.n_buckets

    def prefix(self, level: int) -> int:
        """Length of the masked vector a client of this level uploads: regions 0..level−1."""
        return sum(self.sizes[:level]) + level

    def region(self, j: int) -> slice:
        """Slice of bucket j's region (weight slot first) in the masked vector."""
        start = sum(self.sizes[:j]) + j
        return slice(start, start + 1 + self.sizes[j])

    def input_slice(self, j: int) -> slice:
        """Slice of bucket j in the float input vector."""
        start = sum(self.sizes[:j])
        return slice(start, start + self.sizes[j])


def level_for_rank(rank: int, edges: Sequence[int]) -> int:
    """Buckets a client of this rank trains fully (rank must be one of the edges)."""
    if rank not in edges[1:]:
        raise ConfigError(f"rank {rank} is not a bucket edge {list(edges)}: choose edges from the cohort's ranks")
    return list(edges).index(rank)


def encode_weighted(
    values: np.ndarray,
    weight: float,
    level: int,
    layout: BucketLayout,
    codec: FixedPointCodec,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The client's uint32 upload: per region below ``level``, [s, s·clip(x)] (``layout.prefix(level)`` words).

    ``values`` is the whole float input (``layout.dim``); elements of buckets at or above the level are ignored.
    """
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    if x.shape[0] != layout.dim:
        raise ConfigError(f"input has {x.shape[0]} elements, layout expects {layout.dim}")
    if not 0 <= level <= layout.n_buckets:
        raise ConfigError(f"level {level} outside [0, {layout.n_buckets}]")
    if not np.isfinite(weight) or weight < 0:
        raise ConfigError(f"weight must be finite and non-negative, got {weight}")
    rng = rng or np.random.default_rng()
    s = min(float(weight), codec.weight_bound)
    out = np.zeros(layout.prefix(level), dtype=np.uint32)
    if level == 0:
        return out
    w_code = encode_values(np.array([s]), codec.weight_scale, codec.weight_bound, rng)[0]
    # clip(x, ±c)·s·scale == clip(x·s·scale, ±c·s·scale) for s >= 0: one float64 pass instead of three.
    hi = layout.input_slice(level - 1).stop
    factor = s * codec.value_scale
    scaled = np.multiply(x[:hi], factor, dtype=np.float64)
    limit = codec.value_bound * factor
    np.clip(scaled, -limit, limit, out=scaled)
    if np.isnan(scaled.sum()):
        raise ValueError("cannot encode NaN values")
    coded = stochastic_round(scaled, rng).view(np.uint32)
    for j in range(level):
        region, src = layout.region(j), layout.input_slice(j)
        out[region.start] = w_code
        out[region.start + 1 : region.stop] = coded[src]
    return out


class BucketStatus(StrEnum):
    UNMASKED = "unmasked"
    MERGED = "merged"
    DROPPED = "dropped"


@dataclass(frozen=True)
class BucketOutcome:
    """What happened to one bucket: its surviving cohort and whether it was unmasked, merged or dropped."""

    index: int
    cohort: int
    status: BucketStatus
    merged_into: int | None = None


def bucket_outcomes(
    n_buckets: int, levels: Mapping[int, int], survivors: Iterable[int], min_cohort: int
) -> tuple[BucketOutcome, ...]:
    """Apply the cohort threshold to the surviving clients (both server and clients run this)."""
    alive = list(survivors)
    cohorts = [sum(1 for c in alive if levels[c] > j) for j in range(n_buckets)]
    out: list[BucketOutcome] = []
    last_unmasked: int | None = None
    for j, size in enumerate(cohorts):
        if size >= min_cohort:
            out.append(BucketOutcome(j, size, BucketStatus.UNMASKED))
            last_unmasked = j
        elif last_unmasked is not None:
            out.append(BucketOutcome(j, size, BucketStatus.MERGED, last_unmasked))
        else:
            out.append(BucketOutcome(j, size, BucketStatus.DROPPED))
    return tuple(out)


@dataclass(frozen=True)
class BucketSum:
    """Decoded sums of one bucket over its surviving cohort (None when the bucket was not unmasked)."""

    outcome: BucketOutcome
    weighted_sum: np.ndarray | None  # Σ s_k x_k, float32, layout.sizes[j] elements
    weight_sum: float | None  # Σ s_k


def decode_sum(
    ring_sums: Mapping[int, np.ndarray],
    outcomes: Sequence[BucketOutcome],
    layout: BucketLayout,
    codec: FixedPointCodec,
) -> tuple[BucketSum, ...]:
    """Per-bucket Σ s·x (float32) and Σ s from the unmasked ring sums of each region."""
    result = []
    for outcome in outcomes:
        region = ring_sums.get(outcome.index)
        if outcome.status != BucketStatus.UNMASKED or region is None:
            result.append(BucketSum(outcome, None, None))
            continue
        weight = float(region[:1].view(np.int32)[0]) / codec.weight_scale
        result.append(BucketSum(outcome, decode_values(region[1:], codec.value_scale), weight))
    return tuple(result)
