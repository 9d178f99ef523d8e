"""Which layers of a causal LM get LoRA, and their shapes, read from the model itself.

``"auto"`` takes peft's per-architecture default table (the attention projections peft picks for that
``model_type``), ``"all-linear"`` every linear layer but the output head, and a list names layers by their last
name parts (``"qkv_proj"``, ``"c_attn"``, ``"self_attn.o_proj"``). Shapes come from the layers, so fused
projections (Phi-3's ``qkv_proj``) and GPT-2's transposed ``Conv1D`` need no special case in the LoRA math:
ΔW is always d_out × d_in, and only merging it into a ``Conv1D`` weight transposes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from trainer.factors import ModuleFactors, ModuleShape

if TYPE_CHECKING:  # torch, transformers and peft load in the functions: the CLI parses flags without them
    import torch

# The built-in models (Llama family) adapt all four attention projections: what every checked-in
# measurement used. Other models choose: "auto" is peft's table for the architecture.
BUILTIN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
AUTO = "auto"
ALL_LINEAR = "all-linear"
TargetSpec = str | Sequence[str]


def linear_layers(model: torch.nn.Module) -> dict[str, ModuleShape]:
    """Every ``nn.Linear`` and ``Conv1D`` by its name in the model, except the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    out: dict[str, ModuleShape] = {}
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear):
            out[name] = ModuleShape(d_out=module.out_features, d_in=module.in_features)
        elif isinstance(module, Conv1D):  # weight is d_in × d_out
            d_in, d_out = module.weight.shape
            out[name] = ModuleShape(d_out=int(d_out), d_in=int(d_in))
    return out


def transposed_layers(modules: Mapping[str, torch.nn.Module], names: Sequence[str]) -> set[str]:
    """The named layers (of ``dict(model.named_modules())``) whose weight is stored d_in × d_out (``Conv1D``):
    ΔW is added to them transposed."""
    from transformers.pytorch_utils import Conv1D

    return {n for n in names if isinstance(modules[n], Conv1D)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _layer_names(layers: Mapping[str, ModuleShape]) -> str:
    """The distinct last name parts of the layers: what a user can put in target_modules."""
    return ", ".join(sorted({n.rsplit(".", 1)[-1] for n in layers}))


def auto_targets(model: torch.nn.Module) -> list[str]:
    """peft's default LoRA targets for the model's architecture."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(str(model_type))
    if not names:
        raise ValueError(
            f"peft has no default LoRA targets for model_type {model_type!r}: set target_modules to "
            f"'{ALL_LINEAR}' or a list of this model's linear layers: {_layer_names(linear_layers(model))}"
        )
    return list(names)


def resolve_targets(model: torch.nn.Module, spec: TargetSpec = AUTO) -> dict[str, ModuleShape]:
    """The layers ``spec`` selects, with their shapes; a name that matches no linear layer is an error."""
    layers = linear_layers(model)
    if spec == ALL_LINEAR:
        chosen = layers
    else:
        wanted = auto_targets(model) if spec == AUTO else [spec] if isinstance(spec, str) else list(spec)
        missing = [t for t in wanted if not any(_matches(n, t) for n in layers)]
        if missing or not wanted:
            raise ValueError(
                f"target modules {missing or wanted} match no linear layer of this model; "
                f"its linear layers are: {_layer_names(layers)}"
            )
        chosen = {n: s for n, s in layers.items() if any(_matches(n, t) for t in wanted)}
    if not chosen:
        raise ValueError("the model has no linear layers to adapt")
    return chosen


def task_shapes(layers: Mapping[str, ModuleShape], factors: ModuleFactors) -> dict[str, ModuleShape]:
    """The shapes of the layers a task adapts, checked against this model's own layers before any training.

    A task built for another base model names layers this one lacks, or gives them other shapes.
    """
    unknown = sorted(set(factors) - set(layers))
    if unknown:
        raise ValueError(f"the task adapts {len(unknown)} layers this model lacks, e.g. {unknown[0]!r}")
    for name, f in factors.items():
        s = layers[name]
        if f.B.shape[0] != s.d_out or f.A.shape[1] != s.d_in:
            task = f"{f.B.shape[0]}×{f.A.shape[1]}"
            raise ValueError(f"layer {name}: the task's factors are {task}, this model's layer is {s.d_out}×{s.d_in}")
    return {n: layers[n] for n in factors}


def parse_target_spec(text: str) -> TargetSpec:
    """The command-line form: ``auto``, ``all-linear`` or a comma-separated list of layer names."""
    text = text.strip()
    if text in (AUTO, ALL_LINEAR):
        return text
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("target modules: give auto, all-linear or a comma-separated list of layer names")
    return names
