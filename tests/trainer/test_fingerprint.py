"""The base-model fingerprint: equal for the same weights and layers, different otherwise, cached by file identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from trainer.fingerprint import model_fingerprint, weight_files
from trainer.model import load_base_model
from trainer.model_cache import CACHE_ENV


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def saved_gpt2(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(path)
    return path


def test_tiny_fingerprint_follows_the_weights() -> None:
    a, b, c = (model_fingerprint("tiny", load_base_model("tiny", seed=s)) for s in (0, 0, 1))
    assert a == b != c
    assert a.startswith("LlamaForCausalLM:w=") and a.split(":m=")[1] == c.split(":m=")[1]  # same layers


def test_folder_fingerprint_is_the_files_and_ignores_dtype(tmp_path: Path) -> None:
    one, other = saved_gpt2(tmp_path / "one", 0), saved_gpt2(tmp_path / "two", 1)
    fp32 = model_fingerprint(str(one), load_base_model(str(one)))
    assert fp32.startswith("GPT2LMHeadModel:")
    assert model_fingerprint(str(one), load_base_model(str(one), dtype="bfloat16")) == fp32
    assert model_fingerprint(str(other), load_base_model(str(other))) != fp32
    assert [p.name for p in weight_files(one)] == ["model.safetensors"]


def test_file_digest_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    folder = saved_gpt2(tmp_path / "m", 0)
    model = load_base_model(str(folder))
    first = model_fingerprint(str(folder), model)
    cached = list((tmp_path / "cache" / "fingerprints").iterdir())
    assert len(cached) == 1
    saved_gpt2(folder, 2)  # rewritten in place: new size/mtime, new digest
    assert model_fingerprint(str(folder), load_base_model(str(folder))) != first
    assert len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 2
