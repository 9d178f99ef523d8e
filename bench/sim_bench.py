"""`make bench-sim`: `hetlora simulate` in-process against the Ray backend, in one run on this machine.

For each model in ``--models``: the same simulation (``--clients`` clients, ``--per-round`` per round,
``--rounds`` rounds, one strategy, one seed) with the in-process backend and with Ray (``--actors`` actors of
``--cpus-per-actor`` CPUs, a local Ray started for the run). Reports wall seconds of the rounds (plan to commit
plus the driver's held-out evaluation, the same in both) and of the whole run (with Ray's start and every
actor loading its model), their ratios, whether both backends gave the same held-out losses, and, from a
longer Ray run on the first model (``--memory-rounds``), every actor's RSS after its last task of each round
with a least-squares slope (flat: an actor does not grow with the tasks it ran).

    python bench/sim_bench.py --models tiny,smollm2 --json bench/results/sim.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.cohort import RayOptions
from trainer.simulation import SimulationConfig, run_simulation


def timed(cfg: SimulationConfig) -> dict:
    """One simulation: wall seconds of its rounds and of the whole run, its losses and backend records."""
    t0 = time.perf_counter()
    records = run_simulation(cfg, progress=False)
    total = time.perf_counter() - t0
    rounds = [r for r in records if r["round"] > 0]
    return {
        "backend": cfg.backend,
        "rounds_wall_s": sum(r["wall_s"] for r in rounds),
        "total_wall_s": total,
        "heldout_loss": [r["heldout_loss"] for r in records],
        "clients_trained": sum(len(r["ranks"]) for r in rounds),
        "backend_by_round": [r["backend"] for r in rounds],
    }


def rss_by_round(result: dict) -> dict:
    """Per actor, its RSS after its last task of each round, and the slope in MiB per round (after round 1)."""
    actors = sorted({a for b in result["backend_by_round"] for a in b["worker_rss_mib"]})
    series = {a: [b["worker_rss_mib"].get(a) for b in result["backend_by_round"]] for a in actors}
    slopes = {}
    for a, ys in series.items():
        pts = [(i, y) for i, y in enumerate(ys, 1) if y is not None and i > 1]
        slopes[a] = float(np.polyfit(*zip(*pts, strict=True), 1)[0]) if len(pts) >= 2 else None
    return {"rss_mib": series, "slope_mib_per_round": slopes}


def compare(model: str, args: argparse.Namespace) -> dict:
    base = SimulationConfig(
        strategies=(args.strategy,), model=model, clients=args.clients, per_round=args.per_round,
        rounds=args.rounds, local_steps=args.local_steps, batch_size=args.batch_size, seq_len=args.seq_len,
        eval_clients=args.eval_clients, eval_blocks=2, device_eval=False, save_versions=False, seed=args.seed,
    )  # fmt: skip
    in_process = timed(base)
    ray = timed(replace(base, backend="ray", ray=RayOptions(args.actors, args.cpus_per_actor)))
    same = bool(np.allclose(in_process["heldout_loss"], ray["heldout_loss"], atol=1e-4))
    return {
        "model": model,
        "in_process": in_process,
        "ray": ray,
        "speedup_rounds": in_process["rounds_wall_s"] / ray["rounds_wall_s"],
        "speedup_total": in_process["total_wall_s"] / ray["total_wall_s"],
        "same_heldout_loss": same,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2", help="comma-separated models, one comparison each")
    p.add_argument("--strategy", default="hetlora-rebase")
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-clients", type=int, default=4, help="held-out loss on this many clients per round")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--memory-rounds", type=int, default=10, help="Ray rounds on the first model for actor RSS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("bench/results/sim.json"))
    args = p.parse_args(argv)
    results = []
    for model in args.models.split(","):
        r = compare(model, args)
        results.append(r)
        print(
            f"{model}: rounds {r['in_process']['rounds_wall_s']:.1f} s in-process, {r['ray']['rounds_wall_s']:.1f} s "
            f"on Ray (x{r['speedup_rounds']:.2f}); whole run x{r['speedup_total']:.2f}; "
            f"same losses: {r['same_heldout_loss']}",
            flush=True,
        )
    memory = None
    if args.memory_rounds:
        first = args.models.split(",")[0]
        long = SimulationConfig(
            strategies=(args.strategy,), model=first, clients=args.clients, per_round=args.per_round,
            rounds=args.memory_rounds, local_steps=args.local_steps, batch_size=args.batch_size,
            seq_len=args.seq_len, eval_clients=args.eval_clients, eval_blocks=2, device_eval=False,
            save_versions=False, seed=args.seed, backend="ray", ray=RayOptions(args.actors, args.cpus_per_actor),
        )  # fmt: skip
        memory = {"model": first, "rounds": args.memory_rounds, **rss_by_round(timed(long))}
        print(f"actor RSS slope over {args.memory_rounds} rounds (MiB/round): {memory['slope_mib_per_round']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    report = {"benchmark": "sim", "machine": machine, "config": vars(args), "results": results, "memory": memory}
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
