"""A base model's identity, so a device never trains or uploads against a different base than the job's.

LoRA factors only mean something on the weights they were trained on: a device that loaded another checkpoint
(a different quantisation, a newer release, a typo in a path) would upload deltas that silently damage the global
adapter. The orchestrator computes this fingerprint once, sends it with every task, and a device whose own
differs refuses the task. It names the architecture, the layers LoRA can adapt (every linear layer but the output
head) with their shapes, and the weights:

    LlamaForCausalLM:w=9f2c61d0a4b7e3c5:m=5be1a0c2

The weight part hashes the files the model loads from (a GGUF, or a folder's safetensors), so a device that
loads the same file in bf16 on a GPU matches the CPU orchestrator that loads it in fp32. Hashing a large file
takes seconds, so the digest is cached by each file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from trainer.factors import ModuleShape
from trainer.model import model_source
from trainer.model_cache import cache_dir, file_identity
from trainer.targets import linear_layers

WEIGHT_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")
_CHUNK = 1 << 22


def _file_sha256(path: Path) -> str:
    """sha256 of one file's bytes, cached under ``cache_dir()/fingerprints`` by its identity."""
    cached = cache_dir() / "fingerprints" / f"{path.name}-{file_identity(path)}.sha256"
    if cached.is_file():
        return cached.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(digest.hexdigest())
    return digest.hexdigest()


def weight_files(source: Path) -> list[Path]:
    """The files holding a model's weights: the GGUF itself, or a folder's weight shards in name order."""
    if source.is_file():
        return [source]
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in WEIGHT_FILE_SUFFIXES)
    if not files:
        raise ValueError(f"{source} holds no weight files ({', '.join(WEIGHT_FILE_SUFFIXES)})")
    return files


def _tensors_sha256(model: torch.nn.Module) -> str:
    """sha256 of every parameter (name, shape, fp32 bytes) in name order: for models that have no files."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(p.shape)}".encode())
        digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_digest(model_name: str, model: torch.nn.Module) -> str:
    """A digest of the base weights: of the source files when there are any, else of the tensors (``tiny``)."""
    source = model_source(model_name)
    if source is None:
        return _tensors_sha256(model)
    digest = hashlib.sha256()
    for path in weight_files(source):
        digest.update(f"{path.name}:{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def modules_digest(modules: Mapping[str, ModuleShape]) -> str:
    """A digest of layer names and shapes (what LoRA factors are laid out by).

    Over every adaptable layer rather than the job's targets, so a device can compute it before it knows them.
    """
    text = "\n".join(f"{name}:{s.d_out}x{s.d_in}" for name, s in sorted(modules.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def architecture(model: torch.nn.Module) -> str:
    """The model's class as transformers names it (``config.architectures``), else its Python class."""
    names = getattr(getattr(model, "config", None), "architectures", None)
    return str(names[0]) if names else type(model).__name__


def model_fingerprint(model_name: str, model: torch.nn.Module) -> str:
    """``<architecture>:w=<16 hex of the weights>:m=<8 hex of the layers>``; equal means the same base."""
    layers = modules_digest(linear_layers(model))
    return f"{architecture(model)}:w={weights_digest(model_name, model)[:16]}:m={layers[:8]}"
