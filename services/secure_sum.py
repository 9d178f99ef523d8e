"""The trainer's aggregation sums, computed by secure aggregation instead of in the clear.

A strategy aggregates from :class:`trainer.strategies.AggregateSums` only. This module lays each device's
:class:`Contribution` out by rank bucket, runs a SecAgg+ round over the cohort (``secure_agg``), and turns the
unmasked bucket sums back into ``AggregateSums`` — so the server learns Σ over each bucket's surviving cohort,
never one device's update. It lives in ``services`` because it is the one layer allowed to join the two
libraries.

Layout: bucket edges are the cohort's distinct ranks; bucket j holds rank components [e_j, e_{j+1}) of every
module. Its region is, per module, [w_m per component, w_m·B_m[:, a:b], w_m·A_m[a:b, :]]: weights travel inside
the masked values (normalised by a public bound) so per-module weights (HetLoRA's sparsity scores) work with a
one-slot codec, and a weight per component keeps a device that self-pruned inside a bucket out of the
components it dropped. A bucket whose cohort is below the threshold is never unmasked; its components get
weight 0, which the strategies treat as "nobody trained this" (HetLoRA's paper rule zeroes them, the others
keep them).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from secure_agg import (
    AbortedError,
    BucketLayout,
    BucketSum,
    ClientInput,
    FixedPointCodec,
    RoundConfig,
    SecAggRequirements,
    Stage,
    simulate_round,
)
from trainer.factors import ModuleShape
from trainer.lora_math import ComponentSums
from trainer.strategies import AggregateSums, Contribution


@dataclass(frozen=True)
class SecureSumConfig:
    """Public encoding bounds every device and the server agree on."""

    weight_bound: float = 1e6  # weights are divided by this and clipped to [0, 1] (example counts reach ~1e4)
    value_bound: float = 4.0  # |w·x| per element after normalisation
    requirements: SecAggRequirements = field(default_factory=lambda: SecAggRequirements(0.05, 0.1))
    min_cohort: int | None = None  # defaults to the SecAgg threshold t


def bucket_edges(ranks: Sequence[int]) -> tuple[int, ...]:
    """0 followed by the cohort's distinct ranks: every device's rank is an edge, so it fills whole buckets."""
    return (0, *sorted(set(ranks)))


def _module_width(shape: ModuleShape) -> int:
    return shape.d_out + shape.d_in


def factor_layout(shapes: Mapping[str, ModuleShape], edges: Sequence[int]) -> BucketLayout:
    # Per component and module: its weight, a column of B and a row of A.
    per_component = sum(1 + _module_width(s) for s in shapes.values())
    return BucketLayout(tuple((b - a) * per_component for a, b in itertools.pairwise(edges)))


def encode_factors(
    c: Contribution, shapes: Mapping[str, ModuleShape], edges: Sequence[int], cfg: SecureSumConfig
) -> np.ndarray:
    """Device side: the float vector (layout order) that ``secure_agg`` masks; zeros above the device's rank."""
    parts: list[np.ndarray] = []
    for a, b in itertools.pairwise(edges):
        for m in sorted(shapes):
            s = shapes[m]
            f = c.factors[m]
            w = min(c.weight[m] / cfg.weight_bound, 1.0)
            B = np.zeros((s.d_out, b - a))
            A = np.zeros((b - a, s.d_in))
            if f.rank > a:
                B[:, : min(b, f.rank) - a] = f.B[:, a:b]
                A[: min(b, f.rank) - a] = f.A[a:b]
            # A weight per component: a device that self-pruned inside a bucket adds no weight to the
            # components it dropped, exactly as in the clear (sum_contributions).
            weights = np.where(np.arange(a, b) < f.rank, w, 0.0)
            parts.append(np.concatenate([weights, (w * B).ravel(), (w * A).ravel()]))
    return np.concatenate(parts).astype(np.float32)


def decode_factors(
    sums: Sequence[BucketSum], shapes: Mapping[str, ModuleShape], edges: Sequence[int], r_global: int
) -> dict[str, ComponentSums]:
    """Server side: unmasked bucket sums → per-module component sums (zero weight where not unmasked)."""
    out = {
        m: ComponentSums(np.zeros((s.d_out, r_global)), np.zeros((r_global, s.d_in)), np.zeros(r_global))
        for m, s in shapes.items()
    }
    for bucket, (a, b) in zip(sums, itertools.pairwise(edges), strict=True):
        if bucket.weighted_sum is None:
            continue
        pos = 0
        values = bucket.weighted_sum.astype(np.float64)
        for m in sorted(shapes):
            s = shapes[m]
            width = b - a
            w = values[pos : pos + width]
            pos += width
            Bv = values[pos : pos + s.d_out * width].reshape(s.d_out, width)
            Av = values[pos + s.d_out * width : pos + (s.d_out + s.d_in) * width].reshape(width, s.d_in)
            pos += (s.d_out + s.d_in) * width
            out[m].B[:, a:b] = Bv
            out[m].A[a:b] = Av
            out[m].weight[a:b] = w
    return out


def secure_factor_sums(
    contributions: Mapping[int, tuple[Contribution, int]],
    shapes: Mapping[str, ModuleShape],
    r_global: int,
    round_id: int,
    cfg: SecureSumConfig | None = None,
    drop_at: Mapping[int, Stage] | None = None,
    seed: int = 0,
) -> AggregateSums:
    """One SecAgg+ round over the cohort's factor contributions (client id → (contribution, rank)).

    Runs the whole protocol in-process (the services drive the same state machines over gRPC). Raises
    ``secure_agg.AbortedError`` when fewer than t devices survive.
    """
    cfg = cfg or SecureSumConfig()
    edges = bucket_edges([rank for _, rank in contributions.values()])
    layout = factor_layout(shapes, edges)
    levels = {cid: edges.index(rank) for cid, (_, rank) in contributions.items()}
    config = RoundConfig.create(
        round_id, list(contributions), layout, levels, requirements=cfg.requirements, min_cohort=cfg.min_cohort
    )
    codec = FixedPointCodec(value_bound=cfg.value_bound, weight_bound=1.0, max_clients=len(contributions))
    inputs = {cid: ClientInput(encode_factors(c, shapes, edges, cfg), 1.0) for cid, (c, _) in contributions.items()}
    report = simulate_round(config, inputs, codec, drop_at=drop_at, rng=np.random.default_rng(seed))
    if report.sums is None:
        raise AbortedError(report.abort_reason or "secure aggregation round aborted")
    survivors = len(contributions) - len(drop_at or {})
    return AggregateSums(decode_factors(report.sums, shapes, edges, r_global), {}, {}, survivors)


# FlexLoRA: every device uploads full-size products, so one bucket holds them all (no rank structure to hide).
DENSE_EDGES = (0, 1)


def dense_layout(shapes: Mapping[str, ModuleShape]) -> BucketLayout:
    """One region: per module (sorted), its weight then the weighted d_out × d_in product."""
    return BucketLayout.single(sum(1 + s.d_out * s.d_in for s in shapes.values()))


def encode_dense(c: Contribution, shapes: Mapping[str, ModuleShape], cfg: SecureSumConfig) -> np.ndarray:
    """Device side for FlexLoRA: [w_m, w_m·P_m] per module, weights normalised by the public bound."""
    parts: list[np.ndarray] = []
    for m in sorted(shapes):
        w = min(c.weight[m] / cfg.weight_bound, 1.0)
        parts.append(np.concatenate([[w], (w * np.asarray(c.dense[m], np.float64)).ravel()]))
    return np.concatenate(parts).astype(np.float32)


def decode_dense(
    sums: Sequence[BucketSum], shapes: Mapping[str, ModuleShape]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Server side for FlexLoRA: Σ w·P and Σ w per module from the single unmasked bucket."""
    (bucket,) = sums
    if bucket.weighted_sum is None:
        raise AbortedError("the product bucket was not unmasked (too few devices survived)")
    values = bucket.weighted_sum.astype(np.float64)
    dense, weight, pos = {}, {}, 0
    for m in sorted(shapes):
        s = shapes[m]
        weight[m] = float(values[pos])
        dense[m] = values[pos + 1 : pos + 1 + s.d_out * s.d_in].reshape(s.d_out, s.d_in)
        pos += 1 + s.d_out * s.d_in
    return dense, weight
