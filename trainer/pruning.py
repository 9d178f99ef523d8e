"""HetLoRA rank self-pruning (spec §1.2 b, §5.1): the tail penalty and the decision to drop a component.

The penalty must be computed on the live parameters so that it has a gradient; the public FlexLoRA baseline
computes it on ``.data`` and so regularises nothing. τ = ⌊γ r⌋ is computed exactly (not ``round``, which
makes the tail empty for r ∈ {1, 5, 8, 10, 20, 30, 50} at γ = 0.99).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch

TailForm = Literal["product_of_norms", "norm_of_product"]


def tail_start(rank: int, gamma: float) -> int:
    """τ = ⌊γ r⌋ in exact rational arithmetic (0.29 · 100 must give 29, not 28)."""
    if rank < 1 or not 0 < gamma <= 1:
        raise ValueError(f"need rank ≥ 1 and 0 < γ ≤ 1, got rank={rank}, γ={gamma}")
    return math.floor(Fraction(repr(gamma)) * rank)


def tail_score(B: torch.Tensor, A: torch.Tensor, tau: int, form: TailForm = "product_of_norms") -> torch.Tensor:
    """||B[:, τ:]||_F · ||A[τ:, :]||_F (or ||B_tail A_tail||_F); differentiable in B and A."""
    B_tail, A_tail = B[:, tau:], A[tau:, :]
    if form == "product_of_norms":
        return torch.linalg.matrix_norm(B_tail) * torch.linalg.matrix_norm(A_tail)
    if form == "norm_of_product":
        return torch.linalg.matrix_norm(B_tail @ A_tail)
    raise ValueError(f"unknown tail form {form!r}")


@dataclass(frozen=True)
class PruneConfig:
    """γ (keep fraction), λ (penalty weight), the rank floor, and the tail's norm form."""

    gamma: float = 0.99
    lam: float = 0.01
    r_min: int = 1
    form: TailForm = "product_of_norms"

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1 or self.lam < 0 or self.r_min < 1:
            raise ValueError(f"invalid pruning config {self}")

    @property
    def active(self) -> bool:
        return self.gamma < 1


def pruned_rank(rank: int, tail_before: float, tail_after: float, cfg: PruneConfig) -> int:
    """r ← ⌊γ r⌋ when training shrank the tail relative to what was received, never below r_min."""
    if not cfg.active:
        return rank
    candidate = tail_start(rank, cfg.gamma)
    if tail_after < tail_before and candidate >= cfg.r_min:
        return candidate
    return rank
