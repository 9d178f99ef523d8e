"""Pure HetLoRA math: truncation, zero-padding, sparsity weights and factor-wise aggregation (spec §1.2, §4.2).

Aggregation is written as *component sums* followed by a division rule, because that is exactly what secure
aggregation can provide: for every rank component j, the sum of the weighted factors over the clients whose
rank exceeds j, and the sum of their weights. The paper's rule divides every component by the cohort-wide
weight; ``hetlora-rebase`` moves component j by the mean change of the clients that trained it, then re-bases
the global to its SVD. Rotations (``hetlora-spread``) change the basis a device trains in, never the product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.factors import LoraFactors


def truncate(factors: LoraFactors, rank: int) -> LoraFactors:
    """The leading ``rank`` components (HetLoRA's distribution step: no SVD, no re-scaling)."""
    if not 1 <= rank <= factors.rank:
        raise ValueError(f"cannot truncate rank {factors.rank} factors to rank {rank}")
    return LoraFactors(factors.B[:, :rank].copy(), factors.A[:rank, :].copy())


def zero_pad(factors: LoraFactors, r_max: int) -> LoraFactors:
    """Pad with zero columns of B and zero rows of A up to ``r_max`` (the product is unchanged)."""
    r = factors.rank
    if r > r_max:
        raise ValueError(f"rank {r} exceeds r_max {r_max}")
    B = np.zeros((factors.B.shape[0], r_max), dtype=factors.B.dtype)
    A = np.zeros((r_max, factors.A.shape[1]), dtype=factors.A.dtype)
    B[:, :r] = factors.B
    A[:r, :] = factors.A
    return LoraFactors(B, A)


def product_norm(factors: LoraFactors) -> float:
    """||B A||_F without forming the d_out × d_in product: tr((BᵀB)(AAᵀ)) costs r² instead of d_out·d_in."""
    B = factors.B.astype(np.float64)
    A = factors.A.astype(np.float64)
    gram = (B.T @ B) * (A @ A.T)
    return float(np.sqrt(max(gram.sum(), 0.0)))


def normalize_weights(scores: Sequence[float]) -> np.ndarray:
    """p_k = S_k / Σ S_j, falling back to uniform when every score is 0 (round 0 starts from B = 0)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("need at least one score")
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"weights must be finite and non-negative, got {s.tolist()}")
    total = s.sum()
    return np.full(s.size, 1.0 / s.size) if total == 0 else s / total


@dataclass(frozen=True)
class ComponentSums:
    """Per rank component j < r_max: Σ w_k B_k[:, j], Σ w_k A_k[j, :] and Σ w_k over clients with r_k > j."""

    B: np.ndarray  # d_out × r_max
    A: np.ndarray  # r_max × d_in
    weight: np.ndarray  # r_max

    def __add__(self, other: ComponentSums) -> ComponentSums:
        return ComponentSums(self.B + other.B, self.A + other.A, self.weight + other.weight)


def component_sums(factors: Sequence[LoraFactors], weights: Sequence[float], r_max: int) -> ComponentSums:
    """Weighted sums of zero-padded factors, bucketed by rank component (what secure aggregation returns)."""
    if len(factors) != len(weights) or not factors:
        raise ValueError("need one weight per client and at least one client")
    d_out, d_in = factors[0].B.shape[0], factors[0].A.shape[1]
    B = np.zeros((d_out, r_max), dtype=np.float64)
    A = np.zeros((r_max, d_in), dtype=np.float64)
    w = np.zeros(r_max, dtype=np.float64)
    for f, wk in zip(factors, weights, strict=True):
        r = f.rank
        if r > r_max:
            raise ValueError(f"client rank {r} exceeds r_max {r_max}")
        B[:, :r] += wk * f.B
        A[:r, :] += wk * f.A
        w[:r] += wk
    return ComponentSums(B, A, w)


def paper_average(sums: ComponentSums) -> LoraFactors:
    """HetLoRA as published: every component divided by the cohort-wide weight (component 0 covers everyone).

    Components that no client trained come out as exact zeros: the replacement rule that kills them.
    """
    total = sums.weight[0]
    if total <= 0:
        raise ValueError("cohort weight is zero: nothing to average")
    return LoraFactors((sums.B / total).astype(np.float32), (sums.A / total).astype(np.float32))


def apply_component_deltas(previous: LoraFactors, delta_sums: ComponentSums) -> LoraFactors:
    """previous + (Σ w_k δ_k)_j / W_j per component j; untouched where nobody trained j.

    W_j = Σ_{k: r_k > j} w_k is the weight of the devices that trained component j, so each component moves by
    its own cohort's weighted mean change: a component few devices trained is not shrunk by the others' zeros,
    and one nobody trained keeps its value. With equal ranks this is FedAvg of the factors.
    """
    covered = delta_sums.weight > 0
    B = previous.B.astype(np.float64).copy()
    A = previous.A.astype(np.float64).copy()
    B[:, covered] += delta_sums.B[:, covered] / delta_sums.weight[covered]
    A[covered, :] += delta_sums.A[covered, :] / delta_sums.weight[covered, None]
    return LoraFactors(B.astype(np.float32), A.astype(np.float32))


# Row norm of A under peft's LoRA init, U(±1/√d_in): E‖a‖² = d_in · (1/d_in)/3.
LORA_INIT_A_ROW_NORM = float(np.sqrt(1.0 / 3.0))


def svd_basis(factors: LoraFactors, a_row_norm: float = LORA_INIT_A_ROW_NORM) -> LoraFactors:
    """B·A re-expressed in its SVD basis: A's rows orthogonal with norm ``a_row_norm``, B = UΣ / a_row_norm.

    Costs two thin QRs and an r × r SVD (never the d_out × d_in product). Components come out ordered by
    singular value, so truncation to the leading r is the best rank-r approximation of the product
    (Eckart–Young). Keeping A's rows at LoRA's init scale (rather than splitting Σ evenly, U√Σ and √Σ Vᵀ) keeps
    every component trainable: the gradient of column j of B is proportional to row j of A, so an even split
    starves components with small σ_j and zeroes those with σ_j = 0 for good, while here a component with
    σ_j = 0 is exactly a fresh LoRA component (B_j = 0, A_j a unit-scale direction).
    """
    B = factors.B.astype(np.float64)
    A = factors.A.astype(np.float64)
    Qb, Rb = np.linalg.qr(B)
    Qa, Ra = np.linalg.qr(A.T)
    # Full Vᵀ: when d_out < rank the components past σ's length still get orthogonal A rows.
    u, s, vt = np.linalg.svd(Rb @ Ra.T, full_matrices=True)
    k = s.size  # < rank only when rank exceeds a dimension
    out_B = np.zeros_like(B)
    out_A = np.zeros_like(A)
    out_B[:, :k] = (Qb @ u[:, :k]) * (s / a_row_norm)
    out_A[: vt.shape[0]] = a_row_norm * (vt @ Qa.T)
    return LoraFactors(out_B.astype(np.float32), out_A.astype(np.float32))


def haar_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random n × n rotation (QR of a Gaussian matrix with the signs of R's diagonal fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def rotate(factors: LoraFactors, q: np.ndarray) -> LoraFactors:
    """B·Q, Qᵀ·A for an orthogonal r × r ``q``: the same product in another basis (``qᵀ`` undoes it)."""
    if q.shape != (factors.rank, factors.rank):
        raise ValueError(f"rotation is {q.shape}, factors have rank {factors.rank}")
    B = factors.B.astype(np.float64) @ q
    A = q.T @ factors.A.astype(np.float64)
    return LoraFactors(B.astype(np.float32), A.astype(np.float32))
