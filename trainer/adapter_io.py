"""Global adapters on disk in peft's own format, so ``PeftModel.from_pretrained(base, path)`` just works.

Modules of different global rank (FlexLoRA's SVD form) are zero-padded to one rank; zero components add
nothing to ΔW. ``lora_alpha = scale · r`` reproduces the adapter's scale under peft's α/r rule. Writes go to a
temporary directory that is fsynced and renamed into place, so a crash never leaves a half-written version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trainer.factors import LoraFactors
from trainer.lora_math import zero_pad
from trainer.strategies.base import GlobalAdapter

_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _config(rank: int, scale: float, base_model: str, modules: list[str]) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": scale * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": modules,  # full names: exactly the adapted layers, whatever the architecture
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_adapter(adapter: GlobalAdapter, path: Path, base_model: str = "smollm2", extra: dict | None = None) -> None:
    """Atomically write ``adapter`` as a peft LoRA directory at ``path`` (plus hetlora.json metadata)."""
    path = Path(path)
    rank = adapter.rank
    tensors: dict[str, torch.Tensor] = {}
    for name, f in adapter.factors.items():
        padded = zero_pad(f, rank)
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = torch.from_numpy(np.ascontiguousarray(padded.A, np.float32))
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = torch.from_numpy(np.ascontiguousarray(padded.B, np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        config = _config(rank, adapter.scale, base_model, sorted(adapter.factors))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        (tmp / "hetlora.json").write_text(json.dumps({"scale": adapter.scale, **(extra or {})}, indent=2))
        for child in tmp.iterdir():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_adapter(path: Path) -> GlobalAdapter:
    """Read an adapter written by :func:`save_adapter` (or any peft LoRA on the same modules)."""
    path = Path(path)
    config = json.loads((path / CONFIG_NAME).read_text())
    scale = float(config["lora_alpha"]) / int(config["r"])
    tensors = load_file(str(path / WEIGHTS_NAME))
    names = sorted({k.removeprefix(_PREFIX).rsplit(".lora_", 1)[0] for k in tensors})
    factors = {
        n: LoraFactors(
            tensors[f"{_PREFIX}{n}.lora_B.weight"].numpy().copy(),
            tensors[f"{_PREFIX}{n}.lora_A.weight"].numpy().copy(),
        )
        for n in names
    }
    return GlobalAdapter(factors, scale)
