"""Pure FlexLoRA math (spec §2.1–2.2): average full-size effective updates, redistribute by truncated SVD.

All of Σ goes into B, divided by the receiving client's LoRA scale, so that the client's effective update
``scale · B A`` is the best rank-r approximation of the global update (Eckart–Young).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.factors import LoraFactors
from trainer.lora_math import normalize_weights


def weighted_product_average(products: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """W = Σ p_k · ΔW_k with p_k = n_k / Σ n_j; each ΔW_k is already the client's effective (scaled) update."""
    p = normalize_weights(weights)
    W = np.zeros(products[0].shape, dtype=np.float64)
    for pk, dw in zip(p, products, strict=True):
        W += pk * dw
    return W


@dataclass(frozen=True)
class ThinSVD:
    """W = U diag(S) Vt, singular values descending; computed once per module and sliced per client rank."""

    U: np.ndarray
    S: np.ndarray
    Vt: np.ndarray

    @classmethod
    def of(cls, W: np.ndarray) -> ThinSVD:
        U, S, Vt = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
        return cls(U, S, Vt)

    def factors(self, rank: int, scale: float) -> LoraFactors:
        """B = U_r Σ_r / scale, A = V_rᵀ; ranks beyond min(d_out, d_in) get zero components."""
        if rank < 1 or scale <= 0:
            raise ValueError(f"need rank ≥ 1 and scale > 0, got rank={rank}, scale={scale}")
        k = min(rank, self.S.size)
        B = np.zeros((self.U.shape[0], rank))
        A = np.zeros((rank, self.Vt.shape[1]))
        B[:, :k] = self.U[:, :k] * (self.S[:k] / scale)
        A[:k, :] = self.Vt[:k, :]
        return LoraFactors(B.astype(np.float32), A.astype(np.float32))

    def numerical_rank(self, rtol: float = 1e-6) -> int:
        """Components that carry energy (used to save the dense global exactly as a LoRA adapter)."""
        if self.S.size == 0 or self.S[0] == 0:
            return 0
        return int(np.sum(rtol * self.S[0] < self.S))
