"""LoRA on five causal-LM architectures: target selection, a round of every strategy, and peft's round trip.

Tiny random models are built from each architecture's transformers config, saved and loaded back from disk
through ``trainer.model.load_base_model`` (the path a job's ``[model] path`` takes),
so the shapes the LoRA math uses come from real layers: Phi-3's fused ``qkv_proj`` (d_out = 3 × hidden for
MHA) and GPT-2's ``Conv1D`` (weight stored d_in × d_out) included.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from trainer.adapter_io import save_adapter
from trainer.data.types import ClientDataset, TokenBlocks
from trainer.device import run_task
from trainer.factors import LoraFactors
from trainer.local_train import TrainConfig
from trainer.model import load_base_model
from trainer.peft_bridge import adapted_modules, deltas_merged
from trainer.round_engine import RoundEngine
from trainer.store import MemoryStore
from trainer.strategies import StrategyConfig, make_strategy, strategy_names
from trainer.targets import ALL_LINEAR, AUTO, linear_layers, parse_target_spec, resolve_targets, task_shapes

VOCAB = 256
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
ARCHITECTURES: dict[str, tuple[PretrainedConfig, object]] = {
    "llama": (LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=64), AUTO),
    "qwen2": (Qwen2Config(**SMALL, num_key_value_heads=2, intermediate_size=64), AUTO),
    "gemma3": (Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=8, intermediate_size=64), AUTO),
    "phi3": (Phi3Config(**SMALL, num_key_value_heads=4, intermediate_size=64, pad_token_id=0), ["qkv_proj", "o_proj"]),
    "gpt2": (GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64), AUTO),
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny random model of one architecture, saved as a Hugging Face folder (config + safetensors)."""
    name = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ARCHITECTURES[name][0])
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return name, path


def load(path: Path) -> PreTrainedModel:
    """Through the loader a job's ``[model] path`` goes through (a Hugging Face folder on disk)."""
    return load_base_model(str(path))


def client(cid: str, seed: int) -> ClientDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (6, 16), generator=g)
    blocks = TokenBlocks(ids, ids.clone(), torch.ones_like(ids))
    return ClientDataset(cid, blocks, blocks.select([0, 1]), 6)


def test_targets_come_from_the_model(saved: tuple[str, Path]) -> None:
    name, path = saved
    model = load(path)
    shapes = resolve_targets(model, ARCHITECTURES[name][1])  # type: ignore[arg-type]
    layers = linear_layers(model)
    assert shapes and set(shapes) <= set(layers)
    assert "lm_head" not in layers  # the output head is never a target
    if name == "phi3":
        fused = next(s for n, s in shapes.items() if n.endswith("qkv_proj"))
        assert (fused.d_out, fused.d_in) == (3 * 32, 32)
    if name == "gpt2":
        c_attn = next(s for n, s in shapes.items() if n.endswith("c_attn"))
        assert (c_attn.d_out, c_attn.d_in) == (3 * 32, 32)  # Conv1D weight is 32 × 96: read transposed
    assert set(resolve_targets(model, ALL_LINEAR)) == set(layers)
    with pytest.raises(ValueError, match="match no linear layer of this model; its linear layers are"):
        resolve_targets(model, ["w_qkv"])


def test_an_architecture_without_auto_targets_says_what_to_choose() -> None:
    """peft's table has no Phi-3 entry: "auto" names the fused layers to choose from instead."""
    phi3 = AutoModelForCausalLM.from_config(ARCHITECTURES["phi3"][0])
    with pytest.raises(ValueError, match=r"no default LoRA targets for model_type 'phi3'.*qkv_proj"):
        resolve_targets(phi3, AUTO)


def test_a_round_of_every_strategy_and_peft_reproduces_the_logits(saved: tuple[str, Path], tmp_path: Path) -> None:
    name, path = saved
    model = load(path)
    shapes = adapted_modules(model, ARCHITECTURES[name][1])  # type: ignore[arg-type]
    ranks = {"a": 2, "b": 4, "c": 4}
    data = {c: client(c, i) for i, c in enumerate(ranks)}
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(9))
    for strategy_name in strategy_names():
        strategy = make_strategy(strategy_name, StrategyConfig(r_min=2, r_max=4))
        engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, 0)), ranks, 3, 0)
        plan = engine.plan(1)
        train = TrainConfig(steps=2, batch_size=2, lr=1e-2)
        reports = [run_task(strategy, model, data[c], t, train) for c, t in engine.tasks(plan).items()]
        assert engine.finish(plan, reports, []).committed
        _, adapter = engine.store.latest()
        assert max(np.abs(adapter.delta(m)).max() for m in shapes) > 0, strategy_name  # training moved it
        with torch.no_grad(), deltas_merged(model, {m: adapter.delta(m) for m in shapes}):
            merged = model(ids).logits
        out = tmp_path / strategy_name
        save_adapter(adapter, out, base_model=name)
        with torch.no_grad():
            peft_logits = PeftModel.from_pretrained(load(path), out).eval()(ids).logits
        torch.testing.assert_close(peft_logits, merged, atol=1e-4, rtol=1e-4, msg=strategy_name)


def test_a_task_for_another_base_model_is_refused_before_training() -> None:
    llama = AutoModelForCausalLM.from_config(ARCHITECTURES["llama"][0])
    layers = linear_layers(llama)
    name = next(n for n in layers if n.endswith("q_proj"))
    s = layers[name]
    ok = {name: LoraFactors(np.zeros((s.d_out, 2)), np.zeros((2, s.d_in)))}
    assert task_shapes(layers, ok) == {name: s}
    with pytest.raises(ValueError, match=re.escape("layers this model lacks, e.g. 'transformer.h.0.attn.c_attn'")):
        task_shapes(layers, {"transformer.h.0.attn.c_attn": ok[name]})
    with pytest.raises(ValueError, match=re.escape(f"layer {name}: the task's factors are {s.d_out}×{s.d_in + 1}")):
        task_shapes(layers, {name: LoraFactors(np.zeros((s.d_out, 2)), np.zeros((2, s.d_in + 1)))})


def test_target_specs_on_the_command_line() -> None:
    assert parse_target_spec("auto") == AUTO and parse_target_spec(" all-linear ") == ALL_LINEAR
    assert parse_target_spec("qkv_proj, o_proj") == ("qkv_proj", "o_proj")
    with pytest.raises(ValueError, match="comma-separated list"):
        parse_target_spec(" , ")
