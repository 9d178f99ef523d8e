"""Example-level DP-SGD with Opacus on the LoRA factors of the tiny model.

The guard against silent corruption (opacus#820-type regressions): with σ = 0 and no clipping, DP training
equals plain training on the same batches; with clipping, one step equals the hand-computed mean of
per-example clipped gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data.types import TokenBlocks
from trainer.local_train import PrivateSteps, TrainConfig, train_local
from trainer.peft_bridge import adapted_modules, lora_attached
from trainer.privacy.dp_sgd import (
    IncompatibleModelError,
    check_compatible,
    per_example_loss,
    poisson_batches,
    private_training,
)
from trainer.privacy.settings import NO_CLIP
from trainer.pruning import PruneConfig
from trainer.scaling import Scaling
from trainer.strategies.base import init_factors


def blocks(n: int = 6, seq: int = 12, seed: int = 0) -> TokenBlocks:
    """Fully labelled blocks (no padding): per-example and per-token means then coincide."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (n, seq), generator=g)
    return TokenBlocks(ids, ids.clone(), torch.ones_like(ids))


def start(model: torch.nn.Module, rank: int = 4) -> dict:
    factors = init_factors(adapted_modules(model), rank, seed=3)
    rng = np.random.default_rng(0)  # non-zero B so both factors get gradients
    return {m: type(f)((rng.normal(0, 0.02, f.B.shape)).astype(np.float32), f.A) for m, f in factors.items()}


@pytest.mark.parametrize("prune", [None, PruneConfig(gamma=0.75, lam=0.5)])
def test_no_noise_and_no_clipping_reproduce_plain_training(tiny_model_factory, prune) -> None:
    model, data = tiny_model_factory(0), blocks()
    received, cfg = start(model), TrainConfig(steps=3, batch_size=2, lr=1e-2)
    schedule = [np.array([0, 3]), np.array([1, 5]), np.array([2, 4])]
    plain = train_local(model, data, received, 4, Scaling(), cfg, prune, seed=7, batches=schedule)
    private = PrivateSteps(noise_multiplier=0.0, max_grad_norm=NO_CLIP, sample_rate=2 / len(data), entropy=1)
    dp = train_local(model, data, received, 4, Scaling(), cfg, prune, seed=7, private=private, batches=schedule)
    assert dp.rank == plain.rank
    for m, f in plain.factors.items():
        np.testing.assert_allclose(dp.factors[m].B, f.B, atol=2e-6)
        np.testing.assert_allclose(dp.factors[m].A, f.A, atol=2e-6)
    assert dp.train_loss == pytest.approx(plain.train_loss, rel=1e-5)


def test_a_clipped_step_is_the_mean_of_per_example_clipped_gradients(tiny_model_factory) -> None:
    model, data = tiny_model_factory(0), blocks(n=3)
    clip = 1e-3
    with lora_attached(model, start(model), 4, Scaling()) as peft_model:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        expected = [torch.zeros_like(p) for p in params]
        for i in range(len(data)):  # each example alone, plain autograd
            one = data.select([i])
            loss = per_example_loss(peft_model(input_ids=one.input_ids, attention_mask=one.attention_mask).logits,
                                    one.labels).mean()  # fmt: skip
            grads = torch.autograd.grad(loss, params)
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            for e, g in zip(expected, grads, strict=True):
                e += g * min(1.0, clip / float(norm)) / len(data)
        with private_training(peft_model, torch.optim.SGD(params, lr=1.0), 0.0, clip, len(data), seed=0) as dp:
            batch = data.select([0, 1, 2])
            logits = dp.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            dp.step(per_example_loss(logits, batch.labels).mean(), None)
        step = [b - p.detach() for b, p in zip(before, params, strict=True)]
        for s, e in zip(step, expected, strict=True):
            torch.testing.assert_close(s, e, atol=1e-7, rtol=1e-4)
        assert float(torch.sqrt(sum((s**2).sum() for s in step))) <= clip * (1 + 1e-4)


def test_noise_comes_from_the_device_entropy_and_an_empty_batch_is_a_noise_only_step(tiny_model_factory) -> None:
    model = tiny_model_factory(0)

    def one_empty_step(entropy: int) -> list[torch.Tensor]:
        with lora_attached(model, start(model), 4, Scaling()) as peft_model:
            params = [p for p in peft_model.parameters() if p.requires_grad]
            with private_training(peft_model, torch.optim.SGD(params, lr=1.0), 1.0, 0.5, 2, seed=entropy) as dp:
                dp.step(None, None)
            return [p.detach().clone() for p in params]

    a, b, c = one_empty_step(1), one_empty_step(1), one_empty_step(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    with lora_attached(model, start(model), 4, Scaling()) as peft_model:
        untouched = [p.detach() for p in peft_model.parameters() if p.requires_grad]
    moved = torch.cat([(x - y).flatten() for x, y in zip(a, untouched, strict=True)])
    assert float(moved.std()) == pytest.approx(1.0 * 0.5 / 2, rel=0.05)  # σ·C / expected batch size


def test_poisson_batches_are_reproducible_and_sized_by_the_rate() -> None:
    first, again = poisson_batches(200, 0.1, 50, seed=4), poisson_batches(200, 0.1, 50, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert np.mean([len(b) for b in first]) == pytest.approx(20, rel=0.15)
    assert len({len(b) for b in first}) > 1  # Poisson, not fixed-size


def test_incompatible_layers_are_reported_with_the_fix() -> None:
    with pytest.raises(IncompatibleModelError, match=r"ModuleValidator\.fix"):
        check_compatible(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)))
