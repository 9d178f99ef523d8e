"""Strategy registry: one module per algorithm, looked up by name (CLI, simulation, services)."""

from __future__ import annotations

from collections.abc import Callable

from trainer.strategies.base import (
    AggregateSums,
    Contribution,
    GlobalAdapter,
    Strategy,
    StrategyConfig,
    sum_contributions,
)
from trainer.strategies.flexlora import FlexLoRA
from trainer.strategies.hetlora import HetLoRA, HetLoRACoverage
from trainer.strategies.hetlora_damped import HetLoRADamped
from trainer.strategies.hetlora_delta import HetLoRADelta
from trainer.strategies.hetlora_fedavg_delta import HetLoRAFedAvgDelta
from trainer.strategies.hetlora_rebase import HetLoRARebase
from trainer.strategies.hetlora_residual import HetLoRADeltaResidual
from trainer.strategies.hetlora_rotate import HetLoRARotate
from trainer.strategies.hetlora_spread import HetLoRASpread
from trainer.strategies.hetlora_spread_damped import HetLoRASpreadDamped
from trainer.strategies.hetlora_spread_fedavg import HetLoRASpreadFedAvg
from trainer.strategies.hetlora_svd import HetLoRASVD
from trainer.strategies.homlora import HomLoRA, HomLoRAMax

StrategyFactory = Callable[[StrategyConfig], Strategy]

_REGISTRY: dict[str, StrategyFactory] = {}


def register(name: str, factory: StrategyFactory) -> None:
    """Add a strategy; names are lowercase and unique so CLI lists and metrics labels stay stable."""
    if name != name.lower() or name in _REGISTRY:
        raise ValueError(f"strategy name {name!r} must be lowercase and unused")
    _REGISTRY[name] = factory


def strategy_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def update_strategy_names() -> tuple[str, ...]:
    """Strategies whose devices upload their change to the factors: the ones user-level DP can clip."""
    return tuple(n for n, f in _REGISTRY.items() if getattr(f, "uploads_update", False))


def make_strategy(name: str, config: StrategyConfig) -> Strategy:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(_REGISTRY)}") from None
    return factory(config)


for _cls in (
    HomLoRA,
    HomLoRAMax,
    HetLoRA,
    HetLoRACoverage,
    HetLoRADelta,
    HetLoRASVD,
    HetLoRARebase,
    HetLoRADeltaResidual,
    HetLoRARotate,
    HetLoRASpread,
    HetLoRASpreadDamped,
    HetLoRASpreadFedAvg,
    HetLoRADamped,
    HetLoRAFedAvgDelta,
    FlexLoRA,
):
    register(_cls.name, _cls)

__all__ = [
    "AggregateSums",
    "Contribution",
    "GlobalAdapter",
    "Strategy",
    "StrategyConfig",
    "make_strategy",
    "register",
    "strategy_names",
    "sum_contributions",
    "update_strategy_names",
]
