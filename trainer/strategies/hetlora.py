"""HetLoRA (Cho et al., EMNLP 2024): truncation, rank self-pruning, sparsity-weighted zero-pad aggregation.

``hetlora`` is the rule as published (spec §5.1b): every rank component averaged over the whole cohort, the
aggregate replacing the global factors. It needs only per-bucket sums, so it runs under secure aggregation.
Components nobody in the cohort trained come out as zeros: kept exactly as published, for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainer.factors import ModuleFactors, ModuleShape
from trainer.lora_math import paper_average, product_norm
from trainer.pruning import PruneConfig
from trainer.strategies.base import (
    AggregateSums,
    Contribution,
    GlobalAdapter,
    Strategy,
    StrategyConfig,
    init_factors,
)

WEIGHT_FLOOR = 1e-12
"""Keeps Σ s_k > 0 when every update is exactly zero: the spec's uniform fallback, expressed with sums only."""


class HetLoRA(Strategy):
    name = "hetlora"

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        self.prune: PruneConfig | None = config.prune_config()
        self.weighting = config.sparsity_weighting

    def initial(self, shapes: Mapping[str, ModuleShape], seed: int) -> GlobalAdapter:
        r = self.config.r_max
        return GlobalAdapter(init_factors(shapes, r, seed), self.config.scaling.factor(r))

    def contribution(self, received: ModuleFactors, trained: ModuleFactors, num_examples: int) -> Contribution:
        norms = {m: max(product_norm(f), WEIGHT_FLOOR) for m, f in trained.items()}
        if self.weighting == "client":
            total = sum(norms.values())
            norms = dict.fromkeys(norms, total)
        return Contribution(weight=norms, factors=dict(trained))

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        factors = {m: paper_average(s) for m, s in sums.factor_sums.items()}
        return GlobalAdapter(factors, current.scale)
