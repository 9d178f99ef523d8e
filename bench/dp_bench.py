"""What DP-SGD costs per local step: the same steps on the same batches, plain and with Opacus.

SmolLM2-135M on this machine's CPU (fp32), LoRA rank 8 on the adapted modules, batches of 4 blocks of 64
tokens from a real chitchat user. DP-SGD adds per-example gradients for the LoRA parameters (Opacus hooks),
per-example clipping and Gaussian noise; the frozen base needs none of it. Each setting runs ``--repeats``
times after a warm-up; the JSON has per-step medians and their ratio.

    python bench/dp_bench.py --json bench/results/dp.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from trainer.data.registry import load_federated_corpus
from trainer.local_train import PrivateSteps, TrainConfig, train_local
from trainer.model import load_base_model, load_tokenizer
from trainer.peft_bridge import adapted_modules
from trainer.scaling import Scaling
from trainer.strategies.base import init_factors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--model", default="smollm2", choices=("tiny", "smollm2"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    args = p.parse_args()
    model = load_base_model(args.model)
    data = load_federated_corpus("chitchat", load_tokenizer(), 1, args.seq_len, heldout_blocks=1)[0]
    factors = init_factors(adapted_modules(model), args.rank, seed=0)
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(data.train), args.batch_size, replace=False) for _ in range(args.steps)]
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=5e-4)
    private = PrivateSteps(1.0, 1.0, args.batch_size / len(data.train))

    def step_seconds(dp: PrivateSteps | None) -> float:
        started = time.perf_counter()
        train_local(model, data.train, factors, args.rank, Scaling(), cfg, None, 0, dp, batches)
        return (time.perf_counter() - started) / args.steps

    results = {}
    for name, dp in (("plain", None), ("dp_sgd", private)):
        step_seconds(dp)  # warm-up: allocator, hooks, first-call overheads
        results[name] = [step_seconds(dp) for _ in range(args.repeats)]
        print(f"{name:>7}: {statistics.median(results[name]) * 1000:.0f} ms per step", flush=True)
    plain, dp_sgd = (statistics.median(results[k]) for k in ("plain", "dp_sgd"))
    out = {
        "benchmark": "dp_step",
        "config": vars(args) | {"json": str(args.json), "noise_multiplier": 1.0, "max_grad_norm": 1.0},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "plain_step_s": plain,
        "dp_sgd_step_s": dp_sgd,
        "ratio": dp_sgd / plain,
        "samples": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"DP-SGD / plain: {dp_sgd / plain:.2f}x -> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
