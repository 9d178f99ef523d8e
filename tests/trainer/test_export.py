"""`hetlora export`: a committed version out of a real simulation's store, as peft adapter or merged model.

Every check compares against what the engine itself computes: the merged-ΔW logits it evaluates with, and the
task factors a device of that rank receives. One GPT-2 test covers merging into transposed Conv1D weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, pipeline

from services.cli import main
from trainer.adapter_io import CONFIG_NAME, load_adapter
from trainer.export import check_fits, export, load_version, recorded_scaling, recorded_strategy, write_merged
from trainer.factors import LoraFactors
from trainer.model import load_base_model, load_tokenizer
from trainer.peft_bridge import adapted_modules, deltas_merged
from trainer.round_engine import RoundEngine
from trainer.scaling import Scaling
from trainer.simulation import SimulationConfig, run_simulation
from trainer.store import DirectoryStore
from trainer.strategies import DEFAULT_STRATEGY, GlobalAdapter, StrategyConfig, make_strategy

SIM = SimulationConfig(
    strategies=(DEFAULT_STRATEGY, "flexlora"), model="tiny", clients=3, per_round=2, rounds=1,
    local_steps=2, batch_size=2, eval_blocks=1, lr=5e-2, device_eval=False,
)  # fmt: skip
IDS = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real round of the default strategy and FlexLoRA on the tiny model (a few seconds)."""
    out = tmp_path_factory.mktemp("sim")
    run_simulation(SIM, out=out, progress=False)
    return out


def store(sim: Path, strategy: str = DEFAULT_STRATEGY) -> Path:
    return sim / strategy / "versions"


def engine_logits(adapter: GlobalAdapter) -> torch.Tensor:
    """Logits the way the engine evaluates an adapter: ΔW merged into a fresh base."""
    model = load_base_model("tiny")
    with torch.no_grad(), deltas_merged(model, {m: adapter.delta(m) for m in adapter.factors}):
        return model(IDS).logits


def task_factors(sim: Path, strategy: str, rank: int) -> dict[str, LoraFactors]:
    """What the round engine hands a device of ``rank`` from the store's latest version."""
    rule = make_strategy(strategy, StrategyConfig(SIM.r_min, SIM.r_max, SIM.scaling))
    engine = RoundEngine(rule, DirectoryStore(store(sim, strategy)), {"dev": rank}, 1, 0)
    return dict(engine.tasks(engine.plan(2))["dev"].factors)


def test_adapter_export_loads_in_peft_with_the_engines_logits(sim: Path, tmp_path: Path) -> None:
    result = export(store(sim), tmp_path / "a", "tiny")
    assert (result.version, result.rank, result.strategy, result.merged) == (1, SIM.r_max, None, False)
    assert result.size_bytes > 0 and (tmp_path / "a" / "adapter_model.safetensors").exists()
    _, committed = DirectoryStore(store(sim)).latest()
    expected = engine_logits(committed)
    with torch.no_grad():
        base = load_base_model("tiny")(IDS).logits
        peft_logits = PeftModel.from_pretrained(load_base_model("tiny"), tmp_path / "a").eval()(IDS).logits
    assert (expected - base).abs().max() > 1e-2  # the round moved the model: the comparison means something
    torch.testing.assert_close(peft_logits, expected, atol=1e-4, rtol=1e-4)


def test_an_older_version_can_be_exported(sim: Path, tmp_path: Path) -> None:
    assert export(store(sim), tmp_path / "v0", "tiny", version=0).version == 0
    got, committed = load_adapter(tmp_path / "v0"), load_adapter(store(sim) / "v0000")
    for m in committed.factors:
        np.testing.assert_array_equal(got.delta(m), committed.delta(m))


def test_rank_export_is_what_a_rank_2_device_receives(sim: Path, tmp_path: Path) -> None:
    result = export(store(sim), tmp_path / "r2", "tiny", rank=2)
    assert (result.rank, result.strategy) == (2, DEFAULT_STRATEGY)
    got = load_adapter(tmp_path / "r2")
    want = task_factors(sim, DEFAULT_STRATEGY, 2)
    assert got.rank == 2 and got.scale == SIM.scaling.factor(2)
    assert set(got.factors) == set(want)
    for m, f in want.items():
        np.testing.assert_array_equal(got.factors[m].B, f.B)
        np.testing.assert_array_equal(got.factors[m].A, f.A)


def test_flexlora_rank_export_follows_its_svd_redistribution(sim: Path, tmp_path: Path) -> None:
    """Unrecorded scaling changes only how ΔW splits into B and α; with the run's scaling the factors match too."""
    want = task_factors(sim, "flexlora", 2)
    device = GlobalAdapter(want, SIM.scaling.factor(2))
    inferred = export(store(sim, "flexlora"), tmp_path / "f", "tiny", rank=2, strategy="flexlora")
    assert inferred.strategy == "flexlora"
    got = load_adapter(tmp_path / "f")
    for m in want:
        np.testing.assert_allclose(got.delta(m), device.delta(m), atol=1e-6)
    export(store(sim, "flexlora"), tmp_path / "g", "tiny", rank=2, strategy="flexlora", scaling=SIM.scaling)
    exact = load_adapter(tmp_path / "g")
    for m, f in want.items():
        np.testing.assert_allclose(exact.factors[m].B, f.B, rtol=1e-6)
        np.testing.assert_array_equal(exact.factors[m].A, f.A)


def test_merged_model_generates_and_matches_base_plus_adapter(sim: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = export(store(sim), out, "tiny", merge=True)
    assert result.merged and (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    _, committed = DirectoryStore(store(sim)).latest()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, engine_logits(committed), atol=1e-4, rtol=1e-4)
    generate = pipeline("text-generation", model=str(out), tokenizer=str(out), device="cpu")
    text = generate("Hello there", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert isinstance(text, str) and text.startswith("Hello there") and len(text) > len("Hello there")


def hf_folder(path: Path, config: PretrainedConfig) -> Path:
    """A tiny random model saved as a local Hugging Face folder, with SmolLM2's tokenizer beside it."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    load_tokenizer("tiny").save_pretrained(path)
    return path


def test_merging_into_gpt2_conv1d_weights_matches_peft(tmp_path: Path) -> None:
    """Conv1D stores W as d_in × d_out: the merge must add ΔWᵀ, and peft's own forward is the referee."""
    base = hf_folder(tmp_path / "gpt2", GPT2Config(vocab_size=49152, n_embd=32, n_layer=2, n_head=4))
    rng = np.random.default_rng(0)
    factors = {
        m: LoraFactors(
            rng.normal(size=(s.d_out, 3)).astype(np.float32), rng.normal(size=(3, s.d_in)).astype(np.float32)
        )
        for m, s in adapted_modules(load_base_model(str(base)), "auto").items()
    }
    DirectoryStore(tmp_path / "store", GlobalAdapter(factors, 0.05), base_model=str(base))
    export(tmp_path / "store", tmp_path / "adapter", str(base))
    export(tmp_path / "store", tmp_path / "merged", str(base), merge=True)
    with torch.no_grad():
        plain = load_base_model(str(base))(IDS).logits
        peft_logits = PeftModel.from_pretrained(load_base_model(str(base)), tmp_path / "adapter").eval()(IDS).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()(IDS).logits
    torch.testing.assert_close(merged, peft_logits, atol=1e-4, rtol=1e-4)
    assert (merged - plain).abs().max() > 1e-2


def test_merging_leaves_the_callers_base_model_untouched(tmp_path: Path) -> None:
    model = load_base_model("tiny")
    before = {n: p.clone() for n, p in model.named_parameters()}
    shapes = adapted_modules(model)
    adapter = GlobalAdapter({m: LoraFactors(np.ones((s.d_out, 1)), np.ones((1, s.d_in))) for m, s in shapes.items()}, 1)
    write_merged(model, load_tokenizer("tiny"), adapter, tmp_path / "m", {})
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_strategy_and_scaling_come_from_the_record() -> None:
    adapter = GlobalAdapter({"m": LoraFactors(np.zeros((2, 1)), np.zeros((1, 2)))}, 0.5)
    assert recorded_strategy({"round": 1}) == DEFAULT_STRATEGY
    assert recorded_strategy({"strategy": "flexlora"}) == "flexlora"
    assert recorded_scaling({}, adapter) == Scaling("constant", 0.5)
    assert recorded_scaling({"scaling": {"mode": "alpha", "value": 16}}, adapter) == Scaling("alpha", 16.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 2}, "version 2 is out of range: .* holds versions 0 to 1"),
        ({"version": -1}, "version -1 is out of range"),
        ({"rank": 0}, r"--rank 0 is outside \[1, 32\]"),
        ({"rank": 33}, r"--rank 33 is outside \[1, 32\]: this version's adapter has rank 32"),
    ],
)
def test_bad_version_or_rank_is_refused(sim: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export(store(sim), tmp_path / "x", "tiny", **kwargs)
    assert not (tmp_path / "x").exists()


def test_missing_or_empty_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no store at .*orchestrator's --store"):
        load_version(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()  # a typo never creates a store
    (tmp_path / "sim" / "versions").mkdir(parents=True)
    (tmp_path / "sim" / "versions" / "LATEST").write_text('{"version": 0}')
    with pytest.raises(ValueError, match=r"no committed version.*did you mean its versions/ folder"):
        load_version(tmp_path / "sim")


def test_non_empty_out_needs_force_and_the_store_is_never_replaced(sim: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty: choose a new directory, or pass --force"):
        export(store(sim), out, "tiny")
    assert (out / "keep.txt").exists()
    export(store(sim), out, "tiny", force=True)
    assert not (out / "keep.txt").exists() and (out / CONFIG_NAME).exists()
    with pytest.raises(ValueError, match="overlaps the store"):
        export(store(sim), store(sim), "tiny", force=True)
    with pytest.raises(ValueError, match="overlaps the store"):
        export(store(sim), sim, "tiny", force=True)


def test_a_base_model_of_other_shapes_is_refused(sim: Path, tmp_path: Path) -> None:
    small = LlamaConfig(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    other = hf_folder(tmp_path / "other", small)
    with pytest.raises(
        ValueError,
        match=r"does not match the adapter: layer .* is 32×32 there, 32×64 in the adapter: .*trained on, 'tiny'",
    ):
        export(store(sim), tmp_path / "x", str(other))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=r"lacks 1 adapted layers, e.g. 'nope'"):
        check_fits(
            load_base_model(str(other)),
            GlobalAdapter({"nope": LoraFactors(np.zeros((1, 1)), np.zeros((1, 1)))}, 1),
            "o",
        )


def test_cli_exports_and_reports_errors_with_exit_code_2(
    sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["export", "--store", str(store(sim)), "--model", "tiny", "--out", str(out), "--rank", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"version 1 (rank 2, {DEFAULT_STRATEGY} distribution)" in printed and str(out) in printed
    assert "MB" in printed
    assert json.loads((out / CONFIG_NAME).read_text())["r"] == 2
    assert main(["export", "--store", str(store(sim)), "--model", "tiny", "--out", str(out)]) == 2
    assert "hetlora: error: --out" in capsys.readouterr().err
