"""Where hetlora's numpy factors meet peft and the torch model.

One base model serves every client: a rank-r LoRA is attached with peft, loaded with the client's factors,
trained, read back, and removed with ``unload()`` (which restores the untouched base layers). Evaluation of a
global adapter adds its ΔW into the base weights and restores them exactly afterwards, which works the same for
factor and SVD-form globals and costs no extra forward work.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import cast

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from trainer.factors import LoraFactors, ModuleFactors, ModuleShape
from trainer.scaling import Scaling
from trainer.targets import BUILTIN_TARGETS, TargetSpec, resolve_targets, transposed_layers

_PEFT_PREFIX = "base_model.model."


def adapted_modules(model: torch.nn.Module, targets: TargetSpec = BUILTIN_TARGETS) -> dict[str, ModuleShape]:
    """The layers LoRA adapts (``trainer.targets``), by their full name in the base model, with their shapes."""
    return resolve_targets(model, targets)


def lora_config(rank: int, scaling: Scaling, modules: list[str], transposed: bool = False) -> LoraConfig:
    """LoRA on exactly ``modules`` (full names, so nothing else matches); ``transposed`` for Conv1D layers."""
    return LoraConfig(
        r=rank,
        lora_alpha=scaling.peft_alpha(rank),  # type: ignore[arg-type]  # peft accepts float α
        target_modules=modules,
        fan_in_fan_out=transposed,
        lora_dropout=0.0,
        bias="none",
    )


def _adapter_weight(modules: object) -> torch.Tensor:
    """The default adapter's weight inside peft's ``lora_A``/``lora_B`` ModuleDict."""
    layer = cast(torch.nn.ModuleDict, modules)["default"]
    return cast(torch.Tensor, layer.weight)


def _lora_layers(peft_model: PeftModel) -> dict[str, LoraLayer]:
    return {
        name.removeprefix(_PEFT_PREFIX): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


@contextmanager
def lora_attached(model: torch.nn.Module, factors: ModuleFactors, rank: int, scaling: Scaling) -> Iterator[PeftModel]:
    """Attach a trainable rank-``rank`` LoRA on the layers ``factors`` names; the base model is restored on exit."""
    names = sorted(factors)
    transposed = transposed_layers(dict(model.named_modules()), names)
    if transposed and len(transposed) != len(names):
        raise ValueError("cannot adapt Conv1D and Linear layers in one adapter (peft's fan_in_fan_out is global)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns when a model is wrapped again after unload()
        peft_model = get_peft_model(model, lora_config(rank, scaling, names, bool(transposed)))
    try:
        layers = _lora_layers(peft_model)
        if set(layers) != set(factors):
            raise ValueError(f"factors cover {len(factors)} modules, the model has {len(layers)} adapted layers")
        device = next(model.parameters()).device
        with torch.no_grad():
            for name, layer in layers.items():
                f = factors[name]
                if f.rank != rank:
                    raise ValueError(f"module {name}: factors have rank {f.rank}, expected {rank}")
                _adapter_weight(layer.lora_A).copy_(torch.tensor(np.asarray(f.A, np.float32), device=device))
                _adapter_weight(layer.lora_B).copy_(torch.tensor(np.asarray(f.B, np.float32), device=device))
        yield peft_model
    finally:
        peft_model.unload()


def live_factors(peft_model: PeftModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The trainable (B, A) parameters per module, for penalties that need gradients."""
    return {
        name: (_adapter_weight(layer.lora_B), _adapter_weight(layer.lora_A))
        for name, layer in _lora_layers(peft_model).items()
    }


def read_factors(peft_model: PeftModel, rank: int | None = None) -> dict[str, LoraFactors]:
    """Snapshot the trained factors as numpy, optionally keeping only the leading ``rank`` components."""
    out: dict[str, LoraFactors] = {}
    for name, (B, A) in live_factors(peft_model).items():
        r = B.shape[1] if rank is None else rank
        out[name] = LoraFactors(
            B[:, :r].detach().to("cpu", torch.float32).numpy().copy(),
            A[:r, :].detach().to("cpu", torch.float32).numpy().copy(),
        )
    return out


@contextmanager
def deltas_merged(model: torch.nn.Module, deltas: Mapping[str, np.ndarray]) -> Iterator[torch.nn.Module]:
    """Temporarily W ← W + ΔW for each named module; the original weights are restored bit for bit.

    ΔW is d_out × d_in; a Conv1D layer stores its weight d_in × d_out, so it takes ΔWᵀ.
    """
    modules = dict(model.named_modules())
    transposed = transposed_layers(modules, list(deltas))
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = modules[name].weight
                saved[name] = weight.detach().clone()
                d = torch.from_numpy(np.asarray(delta, np.float32)).to(weight.device)
                weight.add_(d.T if name in transposed else d)
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                modules[name].weight.copy_(original)
