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
from trainer.strategies.hetlora import HetLoRA
from trainer.strategies.hetlora_rebase import HetLoRARebase
from trainer.strategies.hetlora_spread import HetLoRASpread
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


DEFAULT_STRATEGY = "hetlora-rebase"
"""Best measured in the reference configuration (docs/strategies.md); the services and the CLI default to it."""

EXPERIMENTAL = frozenset({"hetlora-spread"})
"""Registered and tested, but not yet measured in the reference configuration: not for production choice."""

# The order users see in --help: baselines, the paper's rule, FlexLoRA, the default, the experimental one.
for _cls in (HomLoRA, HomLoRAMax, HetLoRA, FlexLoRA, HetLoRARebase, HetLoRASpread):
    register(_cls.name, _cls)

__all__ = [
    "DEFAULT_STRATEGY",
    "EXPERIMENTAL",
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
