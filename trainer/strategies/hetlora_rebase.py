"""``hetlora-rebase``: HetLoRA's delta aggregation, re-based every round to the SVD basis with A at init scale.

``hetlora-svd`` re-bases to U√Σ, √Σ Vᵀ so that truncation hands weak devices the best rank-r approximation,
but that split shrinks A's rows to √σ_j: a component with small σ_j learns slowly (∂L/∂B_j ∝ A_j), and one
with σ_j = 0 (every component above the first cohort's largest rank) is zero in both factors and dead for
good, the paper rule's collapse again. Here A's rows are kept orthogonal at LoRA's init norm and Σ goes into
B, so every component stays trainable and an untrained one is exactly a fresh LoRA component. Re-basing needs
only the aggregate, so the strategy runs on rank-bucket sums under secure aggregation.
"""

from __future__ import annotations

from trainer.lora_math import svd_basis
from trainer.strategies.base import AggregateSums, GlobalAdapter
from trainer.strategies.hetlora_delta import HetLoRADelta


class HetLoRARebase(HetLoRADelta):
    name = "hetlora-rebase"

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        moved = super().aggregate(current, sums)
        return GlobalAdapter({m: svd_basis(f) for m, f in moved.factors.items()}, current.scale)
