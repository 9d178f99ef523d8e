"""Held-out loss of a global adapter: the metric every comparison in hetlora is made on.

The adapter's ΔW is merged into the base weights for the duration of the evaluation, so every strategy is
scored the same way and at the cost of a plain forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional

from trainer.data.types import TokenBlocks
from trainer.peft_bridge import deltas_merged
from trainer.strategies.base import GlobalAdapter, Strategy


@torch.no_grad()
def token_loss(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 8) -> tuple[float, int]:
    """(sum of next-token cross-entropies over labelled tokens, number of labelled tokens)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        idx = list(range(start, min(start + batch_size, len(blocks))))
        batch = blocks.select(idx)
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        labels = batch.labels.to(device)[:, 1:]
        logits = logits[:, :-1].float()
        total += float(
            functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum", ignore_index=-100
            )
        )
        count += int((labels != -100).sum())
    return total, count


def mean_client_loss(model: torch.nn.Module, heldout: Sequence[TokenBlocks], batch_size: int = 8) -> float:
    """Mean over clients of each client's mean held-out token loss (each person counts once)."""
    per_client = []
    for blocks in heldout:
        total, count = token_loss(model, blocks, batch_size)
        per_client.append(total / max(count, 1))
    return float(np.mean(per_client))


def evaluate_adapter(
    model: torch.nn.Module, adapter: GlobalAdapter, heldout: Sequence[TokenBlocks], batch_size: int = 8
) -> float:
    """Held-out loss of the base model with ``adapter`` merged in."""
    deltas: Mapping[str, np.ndarray] = {m: adapter.delta(m) for m in adapter.factors}
    with deltas_merged(model, deltas):
        return mean_client_loss(model, heldout, batch_size)


def evaluate_at_rank(
    model: torch.nn.Module, strategy: Strategy, adapter: GlobalAdapter, rank: int, heldout: Sequence[TokenBlocks]
) -> float:
    """What a device of this rank runs: the global as the strategy distributes it, at the device's scale."""
    local = GlobalAdapter(dict(strategy.distribute(adapter, rank)), strategy.config.scaling.factor(rank))
    with deltas_merged(model, {m: local.delta(m) for m in local.factors}):
        return mean_client_loss(model, heldout)
