"""HomLoRA: FedAvg on LoRA factors, every client at one rank, weights = local example counts.

The baseline users compare against. ``homlora`` trains at r_min (what every device can afford);
``homlora-max`` trains at r_max on every device, an upper bound that weak devices could not run.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainer.factors import ModuleFactors, ModuleShape
from trainer.lora_math import paper_average
from trainer.strategies.base import (
    AggregateSums,
    Contribution,
    GlobalAdapter,
    Strategy,
    StrategyConfig,
    init_factors,
)


class HomLoRA(Strategy):
    name = "homlora"

    def __init__(self, config: StrategyConfig, rank: int | None = None) -> None:
        super().__init__(config)
        self.rank = config.r_min if rank is None else rank
        if not 1 <= self.rank <= config.r_max:
            raise ValueError(f"HomLoRA rank {self.rank} outside [1, {config.r_max}]")

    @property
    def global_rank(self) -> int:
        return self.rank

    def client_rank(self, device_rank: int) -> int:
        return self.rank

    def initial(self, shapes: Mapping[str, ModuleShape], seed: int) -> GlobalAdapter:
        return GlobalAdapter(init_factors(shapes, self.rank, seed), self.config.scaling.factor(self.rank))

    def contribution(self, received: ModuleFactors, trained: ModuleFactors, num_examples: int) -> Contribution:
        return Contribution(weight={m: float(num_examples) for m in trained}, factors=dict(trained))

    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        factors = {m: paper_average(s) for m, s in sums.factor_sums.items()}
        return GlobalAdapter(factors, current.scale)


class HomLoRAMax(HomLoRA):
    name = "homlora-max"

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config, rank=config.r_max)
