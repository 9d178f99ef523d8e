"""``hetlora-rebase`` (the default): HetLoRA's distribution and self-pruning, delta aggregation, SVD re-basing.

Distribution by truncation and rank self-pruning are HetLoRA's. Aggregation differs, and needs only
rank-bucketed sums, so it runs under secure aggregation:

- devices upload the *change* to each component they trained (δB = B_k − B_received, δA likewise), weighted
  by their example counts, and component j moves by the weighted mean change of the devices that trained it.
  A component nobody trained keeps its value (the paper rule zeroes it), and one trained by few devices is not
  shrunk by the others' zeros. With equal ranks this is FedAvg of the factors;
- after every round the global is re-expressed in its SVD basis (same product), so truncation hands a rank-r
  device the best rank-r approximation of the global. A's rows are kept orthogonal at LoRA's init norm and Σ
  goes into B, so every component stays trainable and an untrained one is exactly a fresh LoRA component.

Why this rule and not the paper's, with the measurements: docs/strategies.md and ADR 0007.
"""

from __future__ import annotations

from trainer.factors import LoraFactors, ModuleFactors
from trainer.lora_math import apply_component_deltas, svd_basis
from trainer.strategies.base import AggregateSums, Contribution, GlobalAdapter
from trainer.strategies.hetlora import HetLoRA


class HetLoRARebase(HetLoRA):
    name = "hetlora-rebase"
    uploads_update = True

    def contribution(self, received: ModuleFactors, trained: ModuleFactors, num_examples: int) -> Contribution:
        deltas = {}
        for m, f in trained.items():
            r = f.rank  # after self-pruning the dropped components contribute nothing
            deltas[m] = LoraFactors(f.B - received[m].B[:, :r], f.A - received[m].A[:r])
        return Contribution(weight={m: float(num_examples) for m in trained}, factors=deltas)

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        moved = {m: apply_component_deltas(current.factors[m], s) for m, s in sums.factor_sums.items()}
        return GlobalAdapter({m: svd_basis(f) for m, f in moved.items()}, current.scale)
