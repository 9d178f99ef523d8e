"""``hetlora export``: a committed global version out of the store, as a peft adapter or a merged model.

The logic is ``trainer.export``; this module only maps flags onto it and prints what was written. torch and
transformers load when the command runs, so ``hetlora --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli_options import MODEL_HELP, model_spec
from trainer.scaling import SCALING_MODES, Scaling
from trainer.strategies import DEFAULT_STRATEGY, strategy_names


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a committed global version as a peft adapter, or merged into a full Hugging Face model",
        description=(
            "Writes the committed global adapter of a version store (the orchestrator's --store, or a "
            "simulation's <out>/<strategy>/versions) to --out: peft format (PeftModel.from_pretrained), or with "
            "--merge a model folder that AutoModelForCausalLM.from_pretrained and pipeline() load."
        ),
    )
    p.add_argument("--store", type=Path, required=True, help="the version store directory")
    p.add_argument("--version", type=int, default=None, help="committed version to export (default: the latest)")
    p.add_argument(
        "--model", type=model_spec, required=True, help=f"the base model the store was trained on: {MODEL_HELP}"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write (must be empty, unless --force)")
    p.add_argument("--rank", type=int, default=None, help="cut to what a rank-R device runs (default: full rank)")
    p.add_argument("--merge", action="store_true", help="add the adapter into the base weights: a full model")
    p.add_argument(
        "--strategy",
        choices=strategy_names(),
        default=None,
        help=f"distribution rule for --rank (default: the one the store recorded, else {DEFAULT_STRATEGY})",
    )
    p.add_argument(
        "--scaling",
        choices=SCALING_MODES,
        default=None,
        help="devices' LoRA scale rule for --rank (default: the recorded one, else constant at the version's scale)",
    )
    p.add_argument("--scaling-value", type=float, default=2.0, help="with --scaling: the constant scale, or α")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from trainer.export import export

    result = export(
        args.store,
        args.out,
        args.model,
        version=args.version,
        rank=args.rank,
        merge=args.merge,
        strategy=args.strategy,
        scaling=Scaling(args.scaling, args.scaling_value) if args.scaling else None,
        force=args.force,
    )
    kind = "merged model" if result.merged else "peft adapter"
    rule = f", {result.strategy} distribution" if result.strategy else ""
    print(f"version {result.version} (rank {result.rank}{rule}) → {kind} in {result.path}")
    print(f"size: {result.size_bytes / 1e6:.2f} MB")
    return 0
