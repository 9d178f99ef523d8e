#!/usr/bin/env python3
"""Secure-aggregation cost grid: one simulated SecAgg+ round per (n_clients, dim, dropout).

Each round runs the real client and server state machines in one process with every message serialised, so
byte counts are what a transport would carry. CPU time is charged per role with time.process_time (wall time
on this shared 2-core machine is too noisy to compare). Inputs follow the Flower harness: float32 vectors,
weights = example counts in [500, 1000], clip ±8, weight bound 1000. Dropouts are injected after ShareKeys
(the expensive case: the server must rebuild the dropped clients' pairwise masks). (k, t) come from the
parameter finder with 5 % adversarial clients and the round's dropout rate (at least 5 %).

    python bench/secagg_bench.py --json bench/results/secagg.json
    python bench/secagg_bench.py --clients 100 --dim 1000000 --dropout 0,0.1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _ensure_importable() -> None:
    """Fall back to the checkout when secure_agg is not installed (or only as a stale namespace package)."""
    try:
        import secure_agg

        if hasattr(secure_agg, "simulate_round"):
            return
    except ImportError:
        pass
    sys.modules.pop("secure_agg", None)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


_ensure_importable()

import secure_agg  # noqa: E402
from secure_agg import (  # noqa: E402
    BucketLayout,
    ClientInput,
    FixedPointCodec,
    RoundConfig,
    SecAggRequirements,
    Stage,
    simulate_round,
)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def run_one(n: int, dim: int, dropout: float, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    req = SecAggRequirements(adversarial_rate=0.05, dropout_rate=max(dropout, 0.05))
    config = RoundConfig.create(seed, range(n), BucketLayout.single(dim), requirements=req)
    codec = FixedPointCodec(value_bound=8.0, weight_bound=1000.0, max_clients=n)
    inputs = {
        c: ClientInput(rng.normal(0.0, 1.0, dim).astype(np.float32), float(rng.integers(500, 1001))) for c in range(n)
    }
    dropped = rng.choice(n, size=round(dropout * n), replace=False)
    drop_at = {int(c): Stage.MASKED_INPUT for c in dropped}
    t0 = time.perf_counter()
    report = simulate_round(config, inputs, codec, drop_at=drop_at, rng=rng)
    wall = time.perf_counter() - t0
    record: dict[str, object] = {
        "n_clients": n,
        "dim": dim,
        "dropout": dropout,
        "dropped": len(drop_at),
        "degree": config.degree,
        "threshold": config.threshold,
        "completed": report.completed,
        "abort_reason": report.abort_reason,
        "server_cpu_s": round(report.server_cpu_s, 4),
        "wall_s": round(wall, 3),
    }
    cpu = [report.client_cpu_s[c] for c in range(n) if c not in drop_at]
    record["client_cpu_s_mean"] = round(float(np.mean(cpu)), 4)
    record["client_cpu_s_max"] = round(float(np.max(cpu)), 4)
    record["upload_bytes_per_client"] = int(max(report.upload_bytes[c] for c in range(n) if c not in drop_at))
    record["download_bytes_per_client"] = int(max(report.download_bytes.values()))
    if report.result is not None and report.sums is not None:
        survivors = report.result.survivors
        exact = np.zeros(dim)
        for c in survivors:
            exact += inputs[c].weight * np.clip(inputs[c].values.astype(np.float64), -8, 8)
        bucket = report.sums[0]
        assert bucket.weighted_sum is not None and bucket.weight_sum is not None
        record["max_abs_error"] = float(np.max(np.abs(bucket.weighted_sum - exact)))
        record["error_bound"] = codec.sum_error_bound(n) + float(np.max(np.abs(exact))) * 2.0**-24
        total_w = sum(inputs[c].weight for c in survivors)
        mean_err = np.max(np.abs(bucket.weighted_sum / bucket.weight_sum - exact / total_w))
        record["max_abs_error_of_mean"] = float(mean_err)
    else:
        record["max_abs_error"] = None
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=_ints, default=[10, 50, 100], help="comma list of cohort sizes")
    ap.add_argument("--dim", type=_ints, default=[100_000, 1_000_000], help="comma list of vector lengths")
    ap.add_argument("--dropout", type=_floats, default=[0.0, 0.1, 0.3], help="comma list of dropout fractions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the records here")
    args = ap.parse_args(argv)
    records = []
    for dim in args.dim:
        for n in args.clients:
            for p in args.dropout:
                rec = run_one(n, dim, p, args.seed + len(records))
                records.append(rec)
                print(
                    f"n={n:<4d} dim={dim:<8d} drop={p:<4.2f} k/t={rec['degree']}/{rec['threshold']:<3} "
                    f"done={rec['completed']!s:<5} server={rec['server_cpu_s']:.3f}s "
                    f"client={rec['client_cpu_s_mean']:.4f}/{rec['client_cpu_s_max']:.4f}s "
                    f"up={rec['upload_bytes_per_client']} err={rec['max_abs_error']}",
                    flush=True,
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "secure_agg": str(Path(secure_agg.__file__).parent),
        }
        args.json.write_text(json.dumps({"env": env, "records": records}, indent=1) + "\n")
    return 0 if all(r["completed"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
