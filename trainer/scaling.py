"""LoRA scaling per rank: how the effective update scale·B·A depends on a client's rank.

The papers disagree (FlexLoRA: α/r with α = 16; FLoRA: α = 2r; HetLoRA: silent) and the choice matters for
heterogeneous ranks, because a truncated client keeps the global factors but may get a different scale.
``constant`` (the same scale for every rank, the reference measurements' choice) keeps truncation exact;
``alpha`` is peft's α/r; ``rslora`` is α/√r. See docs/adr/0002-lora-scaling.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ScalingMode = Literal["constant", "alpha", "rslora"]
SCALING_MODES: tuple[ScalingMode, ...] = ("constant", "alpha", "rslora")


@dataclass(frozen=True)
class Scaling:
    """``value`` is the constant scale (mode constant) or α (modes alpha and rslora)."""

    mode: ScalingMode = "constant"
    value: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in SCALING_MODES or self.value <= 0:
            raise ValueError(f"invalid scaling {self}; modes: {', '.join(SCALING_MODES)}")

    def factor(self, rank: int) -> float:
        """The multiplier on B·A for a client of this rank."""
        if rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {rank}")
        if self.mode == "constant":
            return self.value
        if self.mode == "alpha":
            return self.value / rank
        return self.value / math.sqrt(rank)

    def peft_alpha(self, rank: int) -> float:
        """The ``lora_alpha`` that makes peft's α/r equal ``factor(rank)`` (no rsLoRA flag needed)."""
        return self.factor(rank) * rank
