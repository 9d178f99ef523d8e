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
from trainer.model import LORA_TARGET_MODULES
from trainer.scaling import Scaling

TARGET_MODULES: tuple[str, ...] = LORA_TARGET_MODULES
_PEFT_PREFIX = "base_model.model."


def adapted_modules(model: torch.nn.Module) -> dict[str, ModuleShape]:
    """The attention projections LoRA adapts, by their name in the base model."""
    shapes: dict[str, ModuleShape] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_MODULES:
            shapes[name] = ModuleShape(d_out=module.out_features, d_in=module.in_features)
    if not shapes:
        raise ValueError(f"model has no {'/'.join(TARGET_MODULES)} linear layers to adapt")
    return shapes


def lora_config(rank: int, scaling: Scaling) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=scaling.peft_alpha(rank),  # type: ignore[arg-type]  # peft accepts float α
        target_modules=list(TARGET_MODULES),
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
    """Attach a trainable rank-``rank`` LoRA holding ``factors``; the base model is restored on exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns when a model is wrapped again after unload()
        peft_model = get_peft_model(model, lora_config(rank, scaling))
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
                _adapter_weight(layer.lora_A).copy_(torch.from_numpy(np.asarray(f.A, np.float32)).to(device))
                _adapter_weight(layer.lora_B).copy_(torch.from_numpy(np.asarray(f.B, np.float32)).to(device))
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
    """Temporarily W ← W + ΔW for each named module; the original weights are restored bit for bit."""
    modules = dict(model.named_modules())
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = modules[name].weight
                saved[name] = weight.detach().clone()
                weight.add_(torch.from_numpy(np.asarray(delta, np.float32)).to(weight.device))
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                modules[name].weight.copy_(original)
