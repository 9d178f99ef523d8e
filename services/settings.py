"""Strategy settings as they travel in a task (protobuf) and as the trainer uses them (``StrategyConfig``)."""

from __future__ import annotations

from services.api.hetlora.v1 import orchestrator_pb2 as pb
from trainer.scaling import Scaling
from trainer.strategies import StrategyConfig


def strategy_settings(
    name: str,
    r_min: int,
    r_max: int,
    scaling_mode: str = "constant",
    scaling_value: float = 2.0,
    gamma: float = 0.99,
    lam: float = 0.01,
    sparsity_weighting: str = "module",
) -> pb.StrategySettings:
    """The deployment's strategy with the trainer's defaults (constant scale 2, HetLoRA's γ = 0.99, λ = 0.01)."""
    return pb.StrategySettings(
        name=name,
        r_min=r_min,
        r_max=r_max,
        scaling_mode=scaling_mode,
        scaling_value=scaling_value,
        gamma=gamma,
        lam=lam,
        sparsity_weighting=sparsity_weighting,
    )


def strategy_config(s: pb.StrategySettings) -> StrategyConfig:
    """Raises ValueError naming the bad setting (Scaling and StrategyConfig validate their fields)."""
    return StrategyConfig(
        s.r_min,
        s.r_max,
        Scaling(s.scaling_mode, s.scaling_value),  # type: ignore[arg-type]  # validated by Scaling
        gamma=s.gamma,
        lam=s.lam,
        sparsity_weighting=s.sparsity_weighting,
    )
