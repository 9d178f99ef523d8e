"""How well the enrollment probe's two points predict what every other rank costs, on this machine's CPU.

For each model the probe (``trainer.probe``, as ``hetlora device enroll --probe`` runs it) measures LoRA
training at r_min = 2 and r_max = 32; then every rank in ``--ranks`` is measured afresh, the same way (one
worker process per rank: real AdamW steps at batch 4 × 64 tokens, LoRA on q/k/v/o). The prediction at each rank
is the linear interpolation the enrollment service assigns ranks from (``trainer.ranks.interpolate``), and the
error is (predicted − measured) / measured. Ranks 2 and 32 are measured again, so their error is the
run-to-run noise. Each rank is measured ``--repeats`` times: the step time kept is the fastest (other processes
on a shared machine only ever slow a step down), the peak memory the mean. For comparison, the fixed cost
model a typed profile goes through (``TrainingCost``, fitted once to SmolLM2) is evaluated with the probe's
matmul GFLOP/s as the device's throughput.

Peak memory is the whole training process's peak RSS (interpreter, torch, fp32 model, training); step time is
the median of ``--steps`` steps after a warm-up step.

    python bench/ranks.py --json bench/results/ranks-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tqdm import tqdm

from trainer.probe import ProbeResult, parse_ranks, probe_device
from trainer.ranks import RankPoint, TrainingCost, interpolate
from trainer.targets import BUILTIN_TARGETS

GEMMA = "models/gemma-3-270m-q4_k_m.gguf"


def _error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured


def _compare(probe: ProbeResult, measured: ProbeResult) -> list[dict[str, Any]]:
    """Per rank: measured, interpolated from the probe, and the fixed cost model, with errors in %."""
    cost = TrainingCost()
    rows = []
    for m in measured.points:
        p = interpolate(probe.points, m.rank)
        fixed = RankPoint(
            m.rank,
            cost.base_mb + m.rank * cost.mb_per_rank,
            (cost.base_gflop + m.rank * cost.gflop_per_rank) / probe.gflops,
        )
        rows.append(
            {
                "rank": m.rank,
                "measured": {"peak_memory_mb": m.peak_memory_mb, "step_seconds": m.step_seconds},
                "predicted": {"peak_memory_mb": p.peak_memory_mb, "step_seconds": p.step_seconds},
                "error_pct": {
                    "peak_memory": _error_pct(p.peak_memory_mb, m.peak_memory_mb),
                    "step_time": _error_pct(p.step_seconds, m.step_seconds),
                },
                "cost_model": {
                    "peak_memory_mb": fixed.peak_memory_mb,
                    "step_seconds": fixed.step_seconds,
                    "error_pct": {
                        "peak_memory": _error_pct(fixed.peak_memory_mb, m.peak_memory_mb),
                        "step_time": _error_pct(fixed.step_seconds, m.step_seconds),
                    },
                },
            }
        )
    return rows


def _best(runs: list[ProbeResult]) -> ProbeResult:
    """Per rank over repeated runs: the fastest step and the mean peak memory."""
    points = tuple(
        RankPoint(ps[0].rank, sum(p.peak_memory_mb for p in ps) / len(ps), min(p.step_seconds for p in ps))
        for ps in zip(*(r.points for r in runs), strict=True)
    )
    return ProbeResult(runs[0].device, runs[0].free_memory_mb, runs[0].gflops, points, runs[0].memory_source)


def _points(result: ProbeResult) -> list[dict[str, float]]:
    return [{"rank": p.rank, "peak_memory_mb": p.peak_memory_mb, "step_seconds": p.step_seconds} for p in result.points]


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.6 * len(results)), dpi=120, squeeze=False)
    for row, (name, r) in zip(axes, results.items(), strict=True):
        ranks = [x["rank"] for x in r["ranks"]]
        for ax, key, label in zip(
            row, ("peak_memory_mb", "step_seconds"), ("peak memory (MiB)", "step time (s)"), strict=True
        ):
            ax.plot(ranks, [x["measured"][key] for x in r["ranks"]], "o", label="measured")
            ax.plot(ranks, [x["predicted"][key] for x in r["ranks"]], "-", label="probe at 2 and 32, interpolated")
            ax.plot(ranks, [x["cost_model"][key] for x in r["ranks"]], ":", label="fixed cost model (typed profile)")
            ax.set_xlabel("LoRA rank")
            ax.set_ylabel(label)
            ax.set_title(f"{Path(name).name}: {label.split(' (')[0]}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path, help="default: --json with .png")
    p.add_argument("--models", default=f"smollm2,{GEMMA}", help="comma-separated model names or paths")
    p.add_argument("--probe-ranks", type=parse_ranks, default=(2, 32))
    p.add_argument("--ranks", type=parse_ranks, default=(2, 8, 16, 32))
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement, after one warm-up step")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="measurements per rank (the probe itself runs once)")
    args = p.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    with tqdm(total=len(models) * (len(args.probe_ranks) + args.repeats * len(args.ranks)), unit="run") as bar:

        def measure(model: str, ranks: tuple[int, ...], what: str) -> ProbeResult:
            bar.set_description(f"{Path(model).name} {what}")
            return probe_device(
                model,
                BUILTIN_TARGETS,
                ranks,
                args.batch_size,
                args.seq_len,
                steps=args.steps,
                on_point=lambda _: bar.update(),
            )

        for model in models:
            probe = measure(model, args.probe_ranks, "probe")
            measured = _best([measure(model, args.ranks, f"measure {i + 1}") for i in range(args.repeats)])
            results[model] = {
                "free_memory_mb": probe.free_memory_mb,
                "gflops": probe.gflops,
                "memory_source": probe.memory_source,
                "probe": _points(probe),
                "ranks": _compare(probe, measured),
            }
    for model, r in results.items():
        print(f"\n{model} (probe at {list(args.probe_ranks)}; matmul {r['gflops']:.0f} GFLOP/s)")
        head = f"{'rank':>5}{'peak MiB':>10}{'pred.':>9}{'err %':>8}{'step s':>9}{'pred.':>8}{'err %':>8}"
        print(head + "   cost model err % (mem, time)")
        for x in r["ranks"]:
            m, q, e, c = x["measured"], x["predicted"], x["error_pct"], x["cost_model"]["error_pct"]
            print(
                f"{x['rank']:>5}{m['peak_memory_mb']:>10.0f}{q['peak_memory_mb']:>9.0f}{e['peak_memory']:>+8.2f}"
                f"{m['step_seconds']:>9.3f}{q['step_seconds']:>8.3f}{e['step_time']:>+8.2f}"
                f"   {c['peak_memory']:+.1f}, {c['step_time']:+.1f}"
            )
    out = {
        "benchmark": "ranks",
        "config": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        }
        | {"targets": list(BUILTIN_TARGETS), "device": "cpu"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "wall_seconds": time.perf_counter() - started,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "models": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    png = args.png or args.json.with_suffix(".png")
    _plot(results, png)
    print(f"\n-> {args.json}, {png} ({out['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
