"""Device-side local training: AdamW on the LoRA factors, with HetLoRA's tail penalty and self-pruning.

The tail penalty λ·Σ_modules ||B_tail||·||A_tail|| is added to the loss on the live parameters, so it shapes
training; after training the tail is compared with the tail of the factors the device received, and the rank
shrinks to ⌊γ r⌋ when it went down (spec §5.1b step 3).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from trainer.data.types import TokenBlocks
from trainer.factors import LoraFactors, ModuleFactors
from trainer.lora_math import rotate
from trainer.peft_bridge import live_factors, lora_attached, read_factors
from trainer.privacy.dp_sgd import per_example_loss, poisson_batches, private_training
from trainer.pruning import PruneConfig, pruned_rank, tail_score, tail_start
from trainer.scaling import Scaling


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings: a fresh AdamW each round, as in the reference measurements."""

    steps: int = 5
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"invalid training config {self}")


@dataclass(frozen=True)
class PrivateSteps:
    """This round's DP-SGD settings, resolved by the device from its ``ExampleDP`` and its data size."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float  # each block's chance of being in a step's batch: batch_size / blocks
    # Sampling and noise must be unpredictable to the server (the task seed is not): fresh OS entropy unless a
    # test pins it. A server that knew the noise could subtract it.
    entropy: int | None = None


@dataclass(frozen=True)
class LocalResult:
    """What local training produced: factors at the (possibly pruned) rank and what happened on the way."""

    factors: dict[str, LoraFactors]
    rank: int
    train_loss: float
    tail_before: float
    tail_after: float


def batch_schedule(num_blocks: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Which training blocks each step uses: epochs of seeded permutations, so runs are reproducible."""
    if num_blocks < 1:
        raise ValueError("client has no training blocks")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(num_blocks).tolist())
    return [np.asarray(order[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]


def rotated(factors: ModuleFactors, basis: Mapping[str, np.ndarray] | None, undo: bool = False) -> ModuleFactors:
    """Each module's factors in its training basis (or back, with ``undo``); unchanged where none is given."""
    if not basis:
        return factors
    return {m: rotate(f, basis[m].T if undo else basis[m]) if m in basis else f for m, f in factors.items()}


def received_basis(
    live: dict[str, tuple[torch.Tensor, torch.Tensor]], basis: Mapping[str, np.ndarray] | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The live (B, A) expressed back in the received basis, differentiably, so the tail penalty sees the tail."""
    if not basis:
        return live
    out = {}
    for m, (B, A) in live.items():
        if m not in basis:
            out[m] = (B, A)
            continue
        q = torch.as_tensor(basis[m], dtype=B.dtype, device=B.device)
        out[m] = (B @ q.T, q @ A)
    return out


def _tail_total(factors: ModuleFactors, tau: int, prune: PruneConfig) -> float:
    with torch.no_grad():
        return float(
            sum(
                tail_score(torch.from_numpy(np.asarray(f.B)), torch.from_numpy(np.asarray(f.A)), tau, prune.form)
                for f in factors.values()
            )
        )


def train_local(
    model: torch.nn.Module,
    blocks: TokenBlocks,
    received: ModuleFactors,
    rank: int,
    scaling: Scaling,
    cfg: TrainConfig,
    prune: PruneConfig | None,
    seed: int,
    private: PrivateSteps | None = None,
    batches: list[np.ndarray] | None = None,
    basis: Mapping[str, np.ndarray] | None = None,
) -> LocalResult:
    """Train a rank-``rank`` LoRA starting from ``received``; returns factors truncated to the new rank.

    With ``private`` the steps are DP-SGD on Poisson-sampled batches; ``batches`` overrides the sampling
    (tests compare the two paths on the same batches). With ``basis`` (an orthogonal Q per
    module) AdamW steps in the rotated factors B·Q, Qᵀ·A; the tail penalty, pruning and the result stay in
    the received basis.
    """
    torch.manual_seed(seed)
    dp_seed = (private.entropy if private.entropy is not None else secrets.randbits(63)) if private else seed
    penalise = prune is not None and prune.active and prune.lam > 0
    tau = tail_start(rank, prune.gamma) if prune is not None else rank
    if batches is None:
        batches = (
            poisson_batches(len(blocks), private.sample_rate, cfg.steps, dp_seed)
            if private is not None
            else batch_schedule(len(blocks), cfg.steps, cfg.batch_size, seed)
        )
    with lora_attached(model, rotated(received, basis), rank, scaling) as peft_model:
        peft_model.train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        live = live_factors(peft_model)
        penalty: Callable[[], torch.Tensor] | None = None
        if penalise:
            assert prune is not None
            lam, form = prune.lam, prune.form

            def tail_penalty() -> torch.Tensor:
                """λ·Σ ||B_tail||·||A_tail|| on the live parameters (the device's data plays no part)."""
                tails = [tail_score(B, A, tau, form) for B, A in received_basis(live, basis).values()]
                return lam * torch.stack(tails).sum()

            penalty = tail_penalty
        if private is None:
            losses = _plain_steps(peft_model, blocks, batches, optimizer, penalty)
        else:
            losses = _private_steps(peft_model, blocks, batches, optimizer, penalty, private, dp_seed)
        peft_model.eval()
        trained = dict(rotated(read_factors(peft_model), basis, undo=True))
    tail_before = tail_after = 0.0
    new_rank = rank
    if prune is not None and prune.active:
        tail_before = _tail_total(received, tau, prune)
        tail_after = _tail_total(trained, tau, prune)
        new_rank = pruned_rank(rank, tail_before, tail_after, prune)
    if new_rank < rank:
        trained = {m: LoraFactors(f.B[:, :new_rank].copy(), f.A[:new_rank].copy()) for m, f in trained.items()}
    mean_loss = float(np.mean(losses)) if losses else float("nan")
    return LocalResult(trained, new_rank, mean_loss, tail_before, tail_after)


def _inputs(model: torch.nn.Module, blocks: TokenBlocks, idx: np.ndarray) -> tuple[dict, torch.Tensor]:
    device = next(model.parameters()).device
    batch = blocks.select(idx.tolist())
    inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
    return inputs, batch.labels.to(device)


def _plain_steps(
    model: torch.nn.Module,
    blocks: TokenBlocks,
    batches: list[np.ndarray],
    optimizer: torch.optim.Optimizer,
    penalty: Callable[[], torch.Tensor] | None,
) -> list[float]:
    losses = []
    for idx in batches:
        inputs, labels = _inputs(model, blocks, idx)
        out = model(**inputs, labels=labels)
        loss = out.loss if penalty is None else out.loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    return losses


def _private_steps(
    model: torch.nn.Module,
    blocks: TokenBlocks,
    batches: list[np.ndarray],
    optimizer: torch.optim.Optimizer,
    penalty: Callable[[], torch.Tensor] | None,
    private: PrivateSteps,
    seed: int,
) -> list[float]:
    losses = []
    expected = private.sample_rate * len(blocks)
    with private_training(model, optimizer, private.noise_multiplier, private.max_grad_norm, expected, seed) as dp:
        for idx in batches:
            if len(idx) == 0:
                dp.step(None, penalty)
                continue
            inputs, labels = _inputs(model, blocks, idx)
            loss = per_example_loss(dp.model(**inputs).logits, labels).mean()
            dp.step(loss, penalty)
            losses.append(float(loss.detach()))
    return losses
