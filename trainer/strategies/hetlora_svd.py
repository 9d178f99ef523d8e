"""``hetlora-svd``: HetLoRA's delta aggregation with the global re-based to its SVD after every round.

``hetlora-delta`` hands a rank-r device the *leading r components* of the global factors, and nothing makes
those the important ones: weak devices scored worse than HomLoRA at r_min in the benchmark. Here the server
re-expresses the aggregated global as U√Σ, √Σ Vᵀ (same product, so nothing is lost), so a rank-r device
receives the best rank-r approximation of the global update. Re-basing needs only the aggregate, so the
strategy still runs on rank-bucket sums under secure aggregation.
"""

from __future__ import annotations

from trainer.lora_math import balanced_svd_basis
from trainer.strategies.base import AggregateSums, GlobalAdapter
from trainer.strategies.hetlora_delta import HetLoRADelta


class HetLoRASVD(HetLoRADelta):
    name = "hetlora-svd"

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        moved = super().aggregate(current, sums)
        return GlobalAdapter({m: balanced_svd_basis(f) for m, f in moved.factors.items()}, current.scale)
