"""Tokenizer, tiny model and cache behaviour of trainer.model (the real weights only under -m slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer import model as tm
from trainer.targets import BUILTIN_TARGETS


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tm.CACHE_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tm.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(tm.CACHE_ENV)
    assert tm.cache_dir() == tmp_path / "xdg" / "hetlora"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tm.cache_dir() == tmp_path / "home" / ".cache" / "hetlora"


def test_publish_atomically_moves_marker_last_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "artefact"

    def write(tmp: Path) -> None:
        assert tmp.parent == tmp_path and not (target / "marker").exists()
        (tmp / "data.bin").write_bytes(b"x")
        (tmp / "marker").write_text("ok")

    tm.publish_atomically(target, "marker", write)
    assert sorted(p.name for p in target.iterdir()) == ["data.bin", "marker"]
    assert [p.name for p in tmp_path.iterdir()] == ["artefact"]  # no temp dir left behind


def test_publish_atomically_publishes_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "artefact"

    def no_marker(tmp: Path) -> None:
        (tmp / "data.bin").write_bytes(b"x")

    def crash(tmp: Path) -> None:
        (tmp / "marker").write_text("half")
        raise OSError("disk full")

    with pytest.raises(RuntimeError, match="marker"):
        tm.publish_atomically(target, "marker", no_marker)
    with pytest.raises(OSError, match="disk full"):
        tm.publish_atomically(target, "marker", crash)
    assert list(target.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["artefact"]


def test_tokenizer_special_tokens(tokenizer) -> None:
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 2
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert len(tokenizer) == tm.SMOLLM2_VOCAB_SIZE
    assert "<|im_start|>" in tokenizer.chat_template
    assert tokenizer("hello world")["input_ids"] == tokenizer("hello world", add_special_tokens=False)["input_ids"]


def test_tiny_model_is_frozen_fp32_eval_llama_with_gqa(tiny_model_factory) -> None:
    model = tiny_model_factory()
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (64, 32, 32)
    assert (attn.o_proj.in_features, attn.o_proj.out_features) == (64, 64)
    assert len(model.model.layers) == 2 and model.config.vocab_size == tm.SMOLLM2_VOCAB_SIZE
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(BUILTIN_TARGETS) <= names


def test_tiny_model_is_seeded_and_leaves_global_rng_alone(tiny_model_factory) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_model_factory(seed=0), tiny_model_factory(seed=0), tiny_model_factory(seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])


def test_tiny_model_forward_loss_is_near_uniform(tiny_model_factory, tokenizer) -> None:
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = tiny_model_factory()(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - math.log(tm.SMOLLM2_VOCAB_SIZE)) < 0.5


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"smollm2, tiny.*gguf"):
        tm.load_base_model("gpt2")


@pytest.mark.slow
def test_real_smollm2_is_a_good_lm(tokenizer) -> None:
    model = tm.load_base_model("smollm2")
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (576, 192)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    text = "The quick brown fox jumps over the lazy dog while the children were playing in the park."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() < 4.0
