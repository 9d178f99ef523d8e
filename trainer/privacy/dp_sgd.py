"""DP-SGD for the LoRA factors on a device, with Opacus doing the per-example work.

Only the LoRA parameters train, so only they get per-example gradients (the frozen base needs none). Blocks
are Poisson-sampled (each with probability q per step), which the accountant's guarantee assumes. The loss is
a mean over examples of each example's own token-mean loss, so one example's clipped gradient never depends
on which other examples were sampled. HetLoRA's tail penalty depends on the parameters only, not on data:
its gradient is added after clipping and noising (post-processing, no privacy cost), so self-pruning keeps
working under DP.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch.nn import functional


class IncompatibleModelError(ValueError):
    """The model has layers Opacus cannot compute per-example gradients for."""


def check_compatible(model: torch.nn.Module) -> None:
    """Opacus' validators on the model about to train; the message lists every problem and the fix."""
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        listed = "; ".join(str(p) for p in problems)
        raise IncompatibleModelError(
            f"example-level DP cannot train this model: {listed}. Fix: replace the modules named (Opacus' "
            "ModuleValidator.fix(model) swaps BatchNorm for GroupNorm, for example) or train without --dp-example"
        )


def poisson_batches(num_blocks: int, sample_rate: float, steps: int, seed: int) -> list[np.ndarray]:
    """Each step takes every block independently with probability ``sample_rate`` (batches vary in size)."""
    if num_blocks < 1 or not 0 < sample_rate <= 1:
        raise ValueError(f"need blocks and 0 < sample_rate ≤ 1, got {num_blocks}, {sample_rate}")
    rng = np.random.default_rng(seed)
    return [np.flatnonzero(rng.random(num_blocks) < sample_rate) for _ in range(steps)]


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss of each example, averaged over its own labelled tokens: shape [batch]."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    tokens = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=-100
    ).view(labels.shape)
    counted = (labels != -100).sum(dim=1).clamp(min=1)
    return tokens.sum(dim=1) / counted


@dataclass
class PrivateOptimizer:
    """One DP-SGD step at a time: ``backward`` the data loss, then ``step`` with an optional penalty."""

    model: GradSampleModule
    optimizer: DPOptimizer
    params: list[torch.nn.Parameter]

    def step(self, data_loss: torch.Tensor | None, penalty: Callable[[], torch.Tensor] | None) -> None:
        if data_loss is None:  # an empty Poisson batch: the step is noise only, as the accounting assumes
            for p in self.params:
                setattr(p, "grad_sample", torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype))  # noqa: B010
        else:
            with warnings.catch_warnings():  # Opacus' hooks on a frozen base: torch warns on every backward
                warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
                data_loss.backward()
        extra = None
        if penalty is not None:
            extra = torch.autograd.grad(penalty(), self.params, allow_unused=True)
        if self.optimizer.pre_step():  # clip per example, sum, add noise, divide by the expected batch size
            if extra is not None:
                for p, g in zip(self.params, extra, strict=True):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
            self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextmanager
def private_training(
    peft_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    seed: int,
) -> Iterator[PrivateOptimizer]:
    """Per-example gradient hooks on the trainable (LoRA) layers for the duration of local training."""
    check_compatible(peft_model)
    model = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean", strict=False)
    generator = torch.Generator(device=next(peft_model.parameters()).device).manual_seed(seed)
    dp = DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, round(expected_batch_size)),
        loss_reduction="mean",
        generator=generator,
    )
    params = [p for p in peft_model.parameters() if p.requires_grad]
    try:
        yield PrivateOptimizer(model, dp, params)
    finally:
        model._close()  # remove the hooks and per-example buffers before peft detaches the adapter
