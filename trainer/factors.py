"""Value types for LoRA factors: what the server stores, sends, and gets back.

Factors are numpy arrays (float32) so that the aggregation math and the secure-aggregation encoding never
depend on torch; only local training converts them to tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoraFactors:
    """One adapted module's LoRA pair: ΔW = scale · B @ A, with B (d_out × r) and A (r × d_in)."""

    B: np.ndarray
    A: np.ndarray

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"LoRA factors do not chain: B {self.B.shape} @ A {self.A.shape}")

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    @property
    def num_floats(self) -> int:
        return int(self.B.size + self.A.size)

    def product(self) -> np.ndarray:
        return self.B @ self.A


ModuleFactors = Mapping[str, LoraFactors]
"""Factors keyed by the adapted module's name (e.g. ``model.layers.0.self_attn.q_proj``)."""


@dataclass(frozen=True)
class ModuleShape:
    """An adapted linear layer's shape: the delta it receives is d_out × d_in."""

    d_out: int
    d_in: int


def count_floats(factors: ModuleFactors) -> int:
    """Floats a device uploads for these factors (the communication cost that benchmarks report)."""
    return sum(f.num_floats for f in factors.values())
