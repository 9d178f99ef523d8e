"""FlexLoRA (Bai et al., NeurIPS 2024): average full-size effective updates, redistribute by truncated SVD.

The global adapter is kept in SVD form (B = U Σ, A = Vᵀ, scale 1) at its numerical rank, so distribution to a
rank-r client is a slice with B divided by the client's scale, and the saved adapter is exact. Devices upload
the d_out × d_in product: 10–40× a factor upload, the price of this strategy (docs/strategies.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from trainer.factors import LoraFactors, ModuleFactors, ModuleShape
from trainer.flex_math import ThinSVD
from trainer.lora_math import truncate
from trainer.strategies.base import (
    AggregateSums,
    Contribution,
    GlobalAdapter,
    Strategy,
    StrategyConfig,
    init_factors,
)


class FlexLoRA(Strategy):
    name = "flexlora"
    dense_upload = True

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)

    def initial(self, shapes: Mapping[str, ModuleShape], seed: int) -> GlobalAdapter:
        # W = 0: every client starts from standard LoRA init at its own rank, as in the authors' code.
        return GlobalAdapter(init_factors(shapes, self.config.r_max, seed), 1.0)

    def distribute(self, current: GlobalAdapter, rank: int) -> ModuleFactors:
        rescale = current.scale / self.config.scaling.factor(rank)
        out: dict[str, LoraFactors] = {}
        for m, f in current.factors.items():
            t = truncate(f, rank)
            out[m] = LoraFactors(t.B * rescale, t.A)
        return out

    def contribution(self, received: ModuleFactors, trained: ModuleFactors, num_examples: int) -> Contribution:
        dense = {m: self.config.scaling.factor(f.rank) * f.product() for m, f in trained.items()}
        return Contribution(weight={m: float(num_examples) for m in trained}, dense=dense)

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        factors: dict[str, LoraFactors] = {}
        for m, total in sums.dense_sums.items():
            svd = ThinSVD.of(total / sums.dense_weight[m])
            factors[m] = svd.factors(max(svd.numerical_rank(), self.config.r_max), 1.0)
        return GlobalAdapter(factors, 1.0)
