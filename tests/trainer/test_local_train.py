"""Local training on the tiny Llama: the tail penalty has an effect, pruning happens, the base is restored."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from trainer.data.types import TokenBlocks
from trainer.factors import LoraFactors
from trainer.local_train import TrainConfig, batch_schedule, received_basis, train_local
from trainer.lora_math import haar_orthogonal
from trainer.peft_bridge import adapted_modules
from trainer.pruning import PruneConfig, tail_score
from trainer.scaling import Scaling
from trainer.strategies import StrategyConfig, make_strategy


def blocks(n: int = 8, seq: int = 16, vocab: int = 49152) -> TokenBlocks:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    return TokenBlocks(ids, ids.clone(), torch.ones_like(ids))


def _random_received(shapes: dict, rank: int, seed: int) -> dict[str, LoraFactors]:
    rng = np.random.default_rng(seed)
    return {
        m: LoraFactors(
            rng.normal(0, 0.1, (s.d_out, rank)).astype(np.float32),
            rng.normal(0, 0.1, (rank, s.d_in)).astype(np.float32),
        )
        for m, s in shapes.items()
    }


def test_batch_schedule_is_seeded_and_covers_blocks() -> None:
    a = batch_schedule(5, 4, 3, seed=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in batch_schedule(5, 4, 3, seed=1)]
    assert set(np.concatenate(a[:1] + a[1:2]).tolist()) >= set(range(5)) - {int(a[1][-1])}


def test_training_moves_factors_and_restores_the_base(tiny_model_factory: Callable[..., PreTrainedModel]) -> None:
    model = tiny_model_factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = make_strategy("homlora", StrategyConfig(r_min=2, r_max=4))
    received = s.distribute(s.initial(adapted_modules(model), 0), 2)
    res = train_local(model, blocks(), received, 2, s.config.scaling, TrainConfig(steps=2, lr=1e-2), None, seed=0)
    assert res.rank == 2 and np.isfinite(res.train_loss)
    assert any(np.abs(f.B).sum() > 0 for f in res.factors.values())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.parameters())


def test_tail_penalty_shrinks_tail_and_triggers_pruning(tiny_model_factory: Callable[..., PreTrainedModel]) -> None:
    model = tiny_model_factory()
    received = _random_received(adapted_modules(model), 4, 0)
    cfg = TrainConfig(steps=3, lr=5e-2)
    strong = train_local(model, blocks(), received, 4, Scaling(), cfg, PruneConfig(gamma=0.5, lam=10.0, r_min=1), 0)
    assert strong.tail_after < strong.tail_before
    assert strong.rank == 2 and all(f.rank == 2 for f in strong.factors.values())
    floor = train_local(model, blocks(), received, 4, Scaling(), cfg, PruneConfig(gamma=0.5, lam=10.0, r_min=3), 0)
    assert floor.rank == 4  # ⌊0.5·4⌋ = 2 is below r_min
    none = train_local(model, blocks(), received, 4, Scaling(), cfg, PruneConfig(gamma=0.5, lam=0.0, r_min=1), 0)
    assert strong.tail_after < none.tail_after  # the penalty acts through the live parameters


def test_training_basis_changes_the_steps_but_not_the_start_or_the_basis_of_the_result(
    tiny_model_factory: Callable[..., PreTrainedModel],
) -> None:
    model = tiny_model_factory()
    shapes = adapted_modules(model)
    received = _random_received(shapes, 4, 4)
    basis = {m: haar_orthogonal(4, np.random.default_rng(i)) for i, m in enumerate(sorted(shapes))}
    still = train_local(model, blocks(), received, 4, Scaling(), TrainConfig(steps=1, lr=1e-12), None, 0, basis=basis)
    for m in shapes:  # a vanishing step: what comes back is what was received, rotated back
        np.testing.assert_allclose(still.factors[m].B, received[m].B, atol=1e-5)
        np.testing.assert_allclose(still.factors[m].A, received[m].A, atol=1e-5)
    cfg = TrainConfig(steps=1, lr=1e-2)
    plain = train_local(model, blocks(), received, 4, Scaling(), cfg, None, 0)
    turned = train_local(model, blocks(), received, 4, Scaling(), cfg, None, 0, basis=basis)
    assert turned.train_loss == pytest.approx(plain.train_loss, rel=1e-5)  # same product before the step
    m = sorted(shapes)[0]  # AdamW steps each coordinate, so the step itself depends on the basis
    assert not np.allclose(turned.factors[m].product(), plain.factors[m].product(), atol=1e-6)


def test_tail_penalty_and_pruning_work_in_the_received_basis(
    tiny_model_factory: Callable[..., PreTrainedModel],
) -> None:
    g = torch.Generator().manual_seed(0)
    B, A, q = (
        torch.randn(6, 4, generator=g),
        torch.randn(4, 5, generator=g),
        haar_orthogonal(4, np.random.default_rng(0)),
    )
    qt = torch.from_numpy(q).float()
    back = received_basis({"m": (B @ qt, qt.T @ A)}, {"m": q})["m"]
    assert torch.allclose(tail_score(*back, 2), tail_score(B, A, 2), rtol=1e-5)
    model = tiny_model_factory()
    shapes = adapted_modules(model)
    received = _random_received(shapes, 4, 0)
    basis = {m: haar_orthogonal(4, np.random.default_rng(7)) for m in shapes}
    prune = PruneConfig(gamma=0.5, lam=10.0, r_min=1)
    res = train_local(model, blocks(), received, 4, Scaling(), TrainConfig(steps=3, lr=5e-2), prune, 0, basis=basis)
    assert res.tail_after < res.tail_before and res.rank == 2
