"""Getting the model out: a committed global version as a peft adapter, or merged into a Hugging Face model.

The store keeps the *global* adapter, at the strategy's global rank and in the form the strategy aggregates in
(FlexLoRA: SVD form at scale 1). A device of rank R runs something else: the global as the strategy
distributes it to rank R, at that rank's scale (``trainer.evaluate.evaluate_at_rank``). Shipping to such
devices needs exactly that adapter, so ``--rank`` applies the strategy's own ``distribute`` rather than a
generic cut. Merging adds ΔW into the base weights once, so the result runs with plain transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from trainer.adapter_io import CONFIG_NAME, load_adapter, save_adapter
from trainer.model import load_base_model, load_tokenizer
from trainer.peft_bridge import deltas_merged
from trainer.scaling import Scaling, ScalingMode
from trainer.store import DirectoryStore
from trainer.strategies import DEFAULT_STRATEGY, GlobalAdapter, StrategyConfig, make_strategy
from trainer.targets import linear_layers


@dataclass(frozen=True)
class Exported:
    """What was written: the summary the CLI prints."""

    version: int
    rank: int
    strategy: str | None  # the distribution rule applied for --rank; None: the global adapter as committed
    path: Path
    size_bytes: int
    merged: bool


@dataclass(frozen=True)
class Version:
    """One committed version read back: its number, adapter, commit record and the base model it names."""

    number: int
    adapter: GlobalAdapter
    record: dict
    base_model: str


def load_version(root: Path, version: int | None = None) -> Version:
    """The committed ``version`` of the store at ``root`` (default: the latest).

    Checked before ``DirectoryStore`` opens it, because opening creates the directory: a mistyped path
    must fail, not leave an empty store behind.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"no store at {root}: pass the orchestrator's --store directory or a simulation's <out>/<strategy>/versions"
        )
    if not (root / "LATEST").exists():
        nested = " (did you mean its versions/ folder?)" if (root / "versions" / "LATEST").exists() else ""
        raise ValueError(f"{root} holds no committed version: it has no LATEST file{nested}")
    store = DirectoryStore(root)
    latest = store.latest_version()
    number = latest if version is None else version
    if not 0 <= number <= latest:
        raise ValueError(f"version {number} is out of range: {root} holds versions 0 to {latest}")
    path = store.path(number)
    record = store.record(number) if (path / "hetlora.json").exists() else {}
    base = str(json.loads((path / CONFIG_NAME).read_text()).get("base_model_name_or_path", ""))
    return Version(number, load_adapter(path), record, base)


def recorded_strategy(record: Mapping[str, Any]) -> str:
    """The strategy a version was committed under; commit records that name none get the default."""
    name = record.get("strategy")
    return str(name) if name else DEFAULT_STRATEGY


def recorded_scaling(record: Mapping[str, Any], adapter: GlobalAdapter) -> Scaling:
    """A device's scale rule: the recorded one (``{"mode", "value"}``), else constant at the global's scale.

    Under constant scaling (the default) every truncating strategy's devices run at the global's own scale.
    FlexLoRA's ``distribute`` divides B by the device scale it assumes, so its ΔW is the same whatever is
    assumed here; only the split between B and ``lora_alpha`` changes.
    """
    s = record.get("scaling")
    if isinstance(s, Mapping):
        return Scaling(cast(ScalingMode, s["mode"]), float(s["value"]))
    return Scaling("constant", adapter.scale)


def for_rank(adapter: GlobalAdapter, rank: int, strategy: str, scaling: Scaling) -> GlobalAdapter:
    """What a rank-``rank`` device starts a round from: the strategy's ``distribute``, at the device's scale."""
    if not 1 <= rank <= adapter.rank:
        raise ValueError(
            f"--rank {rank} is outside [1, {adapter.rank}]: this version's adapter has rank {adapter.rank}"
        )
    rule = make_strategy(strategy, StrategyConfig(r_min=1, r_max=adapter.rank, scaling=scaling))
    return GlobalAdapter(dict(rule.distribute(adapter, rank)), scaling.factor(rank))


def check_fits(model: torch.nn.Module, adapter: GlobalAdapter, model_name: str, trained_on: str = "") -> None:
    """Refuse a base model whose layers the adapter does not fit: peft would fail later, or merge nonsense."""
    todo = f": pass the --model it was trained on{f', {trained_on!r}' if trained_on else ''}"
    layers = linear_layers(model)
    missing = sorted(set(adapter.factors) - set(layers))
    if missing:
        raise ValueError(f"base model {model_name!r} lacks {len(missing)} adapted layers, e.g. {missing[0]!r}{todo}")
    for name, f in sorted(adapter.factors.items()):
        s = layers[name]
        if (f.B.shape[0], f.A.shape[1]) != (s.d_out, s.d_in):
            raise ValueError(
                f"base model {model_name!r} does not match the adapter: layer {name} is {s.d_out}×{s.d_in} there, "
                f"{f.B.shape[0]}×{f.A.shape[1]} in the adapter{todo}"
            )


def prepare_out(out: Path, force: bool, store: Path) -> None:
    """Refuse to overwrite anything unless asked, and never the store itself, even with ``force``."""
    out, store = Path(out).resolve(), Path(store).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory")
    if out == store or store.is_relative_to(out) or out.is_relative_to(store):
        raise ValueError(f"--out {out} overlaps the store {store}: export somewhere outside it")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty: choose a new directory, or pass --force to replace it")


def write_merged(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, adapter: GlobalAdapter, out: Path, extra: dict
) -> None:
    """Save base + ΔW as an ordinary Hugging Face model folder (weights, config, tokenizer), atomically.

    ``deltas_merged`` adds ΔW (transposed into GPT-2's Conv1D weights) and restores the base afterwards, so
    the caller's model is unchanged. The folder is written beside ``out`` and renamed into place, so a
    crash never leaves half a model where a loader would find it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with deltas_merged(model, {m: adapter.delta(m) for m in adapter.factors}):
            cast(Any, model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "hetlora.json").write_text(json.dumps({"scale": adapter.scale, **extra}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export(
    store: Path,
    out: Path,
    model: str,
    version: int | None = None,
    rank: int | None = None,
    merge: bool = False,
    strategy: str | None = None,
    scaling: Scaling | None = None,
    force: bool = False,
) -> Exported:
    """Write a committed version as a peft adapter (or, with ``merge``, a full model) to ``out``.

    ``rank`` cuts it to what a rank-``rank`` device runs, by ``strategy`` (default: the recorded one, else
    ``DEFAULT_STRATEGY``) at ``scaling`` (default: :func:`recorded_scaling`). Every refusal comes before
    anything is written.
    """
    prepare_out(out, force, store)
    v = load_version(store, version)
    adapter, name = v.adapter, None
    if rank is not None:
        name = strategy or recorded_strategy(v.record)
        adapter = for_rank(adapter, rank, name, scaling or recorded_scaling(v.record, adapter))
    base = load_base_model(model)
    check_fits(base, adapter, model, v.base_model)
    extra = {"version": v.number, "rank": adapter.rank, "strategy": name, "store": str(Path(store).resolve())}
    if merge:
        write_merged(base, load_tokenizer(model), adapter, out, extra)
    else:
        save_adapter(adapter, out, base_model=model, extra=extra)
    return Exported(v.number, adapter.rank, name, Path(out), _size(out), merge)
