"""Committed versions load with ``PeftModel.from_pretrained`` and reproduce the engine's own evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from trainer.adapter_io import load_adapter, save_adapter
from trainer.factors import LoraFactors
from trainer.peft_bridge import adapted_modules, deltas_merged
from trainer.store import DirectoryStore
from trainer.strategies import GlobalAdapter


def random_adapter(model: torch.nn.Module, ranks: dict[str, int] | None = None, scale: float = 2.0) -> GlobalAdapter:
    rng = np.random.default_rng(0)
    factors = {}
    for m, s in adapted_modules(model).items():
        r = (ranks or {}).get(m, 3)
        factors[m] = LoraFactors(
            rng.normal(0, 0.05, (s.d_out, r)).astype(np.float32), rng.normal(0, 0.05, (r, s.d_in)).astype(np.float32)
        )
    return GlobalAdapter(factors, scale)


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_peft_from_pretrained_matches_merged_delta(
    tiny_model_factory: Callable[..., PreTrainedModel], tmp_path: Path, scale: float
) -> None:
    base = tiny_model_factory()
    mixed = {m: (5 if "q_proj" in m else 2) for m in adapted_modules(base)}  # FlexLoRA-style uneven ranks
    adapter = random_adapter(base, mixed, scale)
    save_adapter(adapter, tmp_path / "v1", base_model="tiny")
    ids = torch.randint(0, 1000, (2, 12))
    with deltas_merged(base, {m: adapter.delta(m) for m in adapter.factors}):
        expected = base(ids).logits
    peft_model = PeftModel.from_pretrained(tiny_model_factory(), tmp_path / "v1")
    torch.testing.assert_close(peft_model(ids).logits, expected, atol=1e-4, rtol=1e-4)
    back = load_adapter(tmp_path / "v1")
    assert back.scale == pytest.approx(scale)
    for m in adapter.factors:
        np.testing.assert_allclose(back.delta(m), adapter.delta(m), atol=1e-6)


def test_directory_store_commits_and_reopens(
    tiny_model_factory: Callable[..., PreTrainedModel], tmp_path: Path
) -> None:
    base = tiny_model_factory()
    a0 = random_adapter(base)
    store = DirectoryStore(tmp_path / "versions", a0, base_model="tiny")
    v = store.commit(GlobalAdapter({m: LoraFactors(f.B * 2, f.A) for m, f in a0.factors.items()}, 2.0), {"round": 1})
    assert v == 1
    reopened = DirectoryStore(tmp_path / "versions")
    version, latest = reopened.latest()
    assert version == 1
    m = next(iter(a0.factors))
    np.testing.assert_allclose(latest.delta(m), 2 * a0.delta(m), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["LATEST", "v0000", "v0001"]
    with pytest.raises(FileNotFoundError):
        DirectoryStore(tmp_path / "empty")


def test_merge_restores_weights_exactly(tiny_model_factory: Callable[..., PreTrainedModel]) -> None:
    base = tiny_model_factory()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    adapter = random_adapter(base)
    with pytest.raises(RuntimeError), deltas_merged(base, {m: adapter.delta(m) for m in adapter.factors}):
        raise RuntimeError("evaluation failed half way")
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
