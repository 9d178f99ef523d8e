"""The strategy interface: how a federated LoRA algorithm plans, distributes and aggregates.

A strategy never sees one client's update on the server side: ``aggregate`` receives only
:class:`AggregateSums` — per rank component, the weighted sums over the clients that trained it and the sums
of their weights — which is exactly what rank-bucketed secure aggregation reveals. ``contribution`` runs on
the device and decides what it uploads (masked, when secure aggregation is on).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trainer.factors import LoraFactors, ModuleFactors, ModuleShape
from trainer.lora_math import ComponentSums, component_sums, truncate
from trainer.pruning import PruneConfig
from trainer.scaling import Scaling


@dataclass(frozen=True)
class GlobalAdapter:
    """A committed global version: per module ΔW = scale · B · A (B, A at the strategy's global rank)."""

    factors: Mapping[str, LoraFactors]
    scale: float

    def delta(self, module: str) -> np.ndarray:
        f = self.factors[module]
        return (self.scale * (f.B.astype(np.float64) @ f.A.astype(np.float64))).astype(np.float32)

    @property
    def rank(self) -> int:
        return max(f.rank for f in self.factors.values())


@dataclass(frozen=True)
class Contribution:
    """One device's upload: a weight per module plus factors (bucketed by rank) or full-size products."""

    weight: Mapping[str, float]
    factors: Mapping[str, LoraFactors] = field(default_factory=dict)
    dense: Mapping[str, np.ndarray] = field(default_factory=dict)

    def upload_floats(self) -> int:
        """Floats on the wire: one weight per module plus the (masked) payload."""
        return (
            len(self.weight)
            + sum(f.num_floats for f in self.factors.values())
            + sum(int(d.size) for d in self.dense.values())
        )


@dataclass(frozen=True)
class AggregateSums:
    """What the server learns from a round: sums over the reporting cohort, never individual updates."""

    factor_sums: Mapping[str, ComponentSums]
    dense_sums: Mapping[str, np.ndarray]
    dense_weight: Mapping[str, float]
    num_clients: int


def sum_contributions(contributions: Sequence[Contribution], r_max: int) -> AggregateSums:
    """The plaintext reference of what secure aggregation computes (the simulation uses it directly)."""
    if not contributions:
        raise ValueError("no contributions to sum")
    first = contributions[0]
    factor_sums = {
        m: component_sums([c.factors[m] for c in contributions], [c.weight[m] for c in contributions], r_max)
        for m in first.factors
    }
    dense_sums: dict[str, np.ndarray] = {}
    dense_weight: dict[str, float] = {}
    for m in first.dense:
        acc = np.zeros(first.dense[m].shape, dtype=np.float64)
        for c in contributions:
            acc += c.weight[m] * c.dense[m]
        dense_sums[m] = acc
        dense_weight[m] = float(sum(c.weight[m] for c in contributions))
    return AggregateSums(factor_sums, dense_sums, dense_weight, len(contributions))


@dataclass(frozen=True)
class StrategyConfig:
    """Settings every strategy shares: the rank range, the LoRA scaling rule, HetLoRA's γ and λ."""

    r_min: int = 2
    r_max: int = 32
    scaling: Scaling = field(default_factory=Scaling)
    gamma: float = 0.99
    lam: float = 0.01
    sparsity_weighting: str = "module"  # HetLoRA: ||B_k A_k||_F per module, or summed over modules per client

    def __post_init__(self) -> None:
        if self.sparsity_weighting not in ("module", "client"):
            raise ValueError(f"sparsity_weighting must be 'module' or 'client', got {self.sparsity_weighting!r}")
        if not 1 <= self.r_min <= self.r_max:
            raise ValueError(f"need 1 ≤ r_min ≤ r_max, got r_min={self.r_min}, r_max={self.r_max}")

    def prune_config(self) -> PruneConfig:
        """HetLoRA's self-pruning settings (γ, λ) with the deployment's rank floor."""
        return PruneConfig(gamma=self.gamma, lam=self.lam, r_min=self.r_min)


def init_factors(shapes: Mapping[str, ModuleShape], rank: int, seed: int) -> dict[str, LoraFactors]:
    """Standard LoRA init at ``rank``: B = 0, A ~ U(±1/√d_in) (peft's kaiming-uniform(a=√5) bound)."""
    out: dict[str, LoraFactors] = {}
    for name in sorted(shapes):
        s = shapes[name]
        # One stream per module, so the leading rows of A agree across ranks (HomLoRA r_min vs HetLoRA r_max).
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        bound = 1.0 / np.sqrt(s.d_in)
        A = rng.uniform(-bound, bound, size=(rank, s.d_in)).astype(np.float32)
        out[name] = LoraFactors(np.zeros((s.d_out, rank), dtype=np.float32), A)
    return out


class Strategy(ABC):
    """One federated LoRA algorithm. Subclasses set ``name`` and implement the four round steps."""

    name: str = ""
    prune: PruneConfig | None = None
    dense_upload: bool = False  # uploads full-size products (FlexLoRA) instead of rank-bucketed factors
    uploads_update: bool = False  # uploads its change to the factors (user-level DP clips exactly that)

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    @property
    def global_rank(self) -> int:
        """Width of the global factors and of the rank-bucketed sums (r_max unless every client shares a rank)."""
        return self.config.r_max

    def client_rank(self, device_rank: int) -> int:
        """The rank a device trains at this round (homogeneous strategies override the device's own)."""
        return device_rank

    @abstractmethod
    def initial(self, shapes: Mapping[str, ModuleShape], seed: int) -> GlobalAdapter:
        """Version 0 of the global adapter."""

    def distribute(self, current: GlobalAdapter, rank: int) -> ModuleFactors:
        """The factors a client of this rank starts from (its scale is ``config.scaling.factor(rank)``).

        By default the leading ``rank`` components (HetLoRA's truncation; HomLoRA's identity).
        """
        return {m: truncate(f, rank) for m, f in current.factors.items()}

    def training_basis(self, received: ModuleFactors, seed: int) -> dict[str, np.ndarray]:
        """Device side: per module an orthogonal Q to train ``received`` in (B·Q, Qᵀ·A), undone before upload.

        The product, and so the truncation the device received, is unchanged; only the coordinates AdamW
        steps in differ. None by default: devices train in the basis they received.
        """
        return {}

    @abstractmethod
    def contribution(self, received: ModuleFactors, trained: ModuleFactors, num_examples: int) -> Contribution:
        """Device side: what to upload, given what was received and what local training produced."""

    @abstractmethod
    def aggregate(self, current: GlobalAdapter, sums: AggregateSums) -> GlobalAdapter:
        """Server side: the next global version from the cohort's sums."""
