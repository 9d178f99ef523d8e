"""HetLoRA with delta aggregation over each component's own cohort (``hetlora-delta``; issue 8).

Distribution by truncation and rank self-pruning are HetLoRA's. Aggregation differs in two ways, both
computable from rank-bucketed sums: devices upload the *change* they made to each component they trained
(δB = B_k − B_received, δA likewise), and the server moves component j by the weighted mean change of the
devices that trained it. A component nobody trained this round keeps its value instead of being zeroed (the
paper rule's collapse), and a component trained by few devices is not shrunk by the others' zeros (the
§4.2 dilution). With equal ranks this is exactly FedAvg of the factors; to first order in the local change it
is FedAvg of the products B·A, because δ(BA) ≈ δB·A + B·δA is linear in the uploaded deltas.
"""

from __future__ import annotations

from trainer.factors import LoraFactors, ModuleFactors
from trainer.lora_math import apply_component_deltas
from trainer.strategies.base import AggregateSums, Contribution, GlobalAdapter
from trainer.strategies.hetlora import HetLoRA


class HetLoRADelta(HetLoRA):
    name = "hetlora-delta"
    uploads_update = True
    damping = 0.0  # component j's mean change is scaled by (W_j / W) ** damping (lora_math.apply_component_deltas)

    def contribution(self, received: ModuleFactors, trained: ModuleFactors, num_examples: int) -> Contribution:
        deltas = {}
        for m, f in trained.items():
            r = f.rank  # after self-pruning the dropped components contribute nothing
            deltas[m] = LoraFactors(f.B - received[m].B[:, :r], f.A - received[m].A[:r])
        return Contribution(weight={m: float(num_examples) for m in trained}, factors=deltas)

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        factors = {m: apply_component_deltas(current.factors[m], s, self.damping) for m, s in sums.factor_sums.items()}
        return GlobalAdapter(factors, current.scale)
