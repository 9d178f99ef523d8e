"""Range checks on decoded bucket sums: what the server can verify about updates it never sees.

Secure aggregation hides each client's vector, so the server cannot check one update; it can check the sum.
Every honest client clips its weight to [0, weight_bound] and each weighted element to ±value_bound·s, and
the codec leaves headroom bits no honest sum reaches. So for a bucket whose surviving cohort has n clients
and decoded weight sum W:

    0 ≤ W ≤ n·weight_bound                 (plus n rounding units)
    |Σ s·x| ≤ value_bound · W  per element  (plus n rounding units)

A client that uploads arbitrary ring values breaks these with overwhelming probability (its contribution is
uniform mod 2^32). One that stays inside them has bounded influence: the committed sum still obeys the bound,
so no element of the result exceeds the clip bound times the cohort. Finer guarantees (each client's update
in range) need zero-knowledge range proofs (ACORN, RoFL), out of scope here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from secure_agg.buckets import BucketSum
from secure_agg.encoding import FixedPointCodec
from secure_agg.errors import SumOutOfRangeError


@dataclass(frozen=True)
class SumViolation:
    """One bucket whose decoded sum is outside what its cohort can produce."""

    bucket: int
    cohort: int
    detail: str


def sum_violations(sums: Sequence[BucketSum], codec: FixedPointCodec) -> tuple[SumViolation, ...]:
    """Every unmasked bucket whose weight sum or elements are out of its cohort's range (empty when sound)."""
    out = []
    for b in sums:
        if b.weighted_sum is None or b.weight_sum is None:
            continue
        n = b.outcome.cohort
        w_slack = n / codec.weight_scale
        w_max = n * codec.weight_bound + w_slack
        if not -w_slack <= b.weight_sum <= w_max:
            out.append(SumViolation(b.outcome.index, n, f"weight sum {b.weight_sum:.6g} outside [0, {w_max:.6g}]"))
            continue
        limit = codec.value_bound * (max(b.weight_sum, 0.0) + w_slack) + n / codec.value_scale
        values = np.abs(b.weighted_sum.astype(np.float64))
        bad = int(np.count_nonzero(values > limit * (1 + 2**-20)))
        if bad:
            worst = float(values.max())
            out.append(SumViolation(b.outcome.index, n, f"{bad} elements exceed ±{limit:.6g} (largest {worst:.6g})"))
    return tuple(out)


def check_sums(sums: Sequence[BucketSum], codec: FixedPointCodec) -> None:
    """Raise :class:`SumOutOfRangeError` naming every bucket that fails :func:`sum_violations`."""
    violations = sum_violations(sums, codec)
    if violations:
        detail = "; ".join(f"bucket {v.bucket} (cohort {v.cohort}): {v.detail}" for v in violations)
        raise SumOutOfRangeError(
            f"decoded sums out of range, a device did not encode within the bounds: {detail}",
            tuple(v.bucket for v in violations),
        )
