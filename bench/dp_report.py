"""HetLoRA (``hetlora-rebase``) with and without DP, beside the homogeneous baselines: one table, one plot.

Reads the ``bench/quality.py`` results of the same configuration (20 chitchat users, 5 per round, 12 rounds,
ranks uniform in [2, 32]): the baselines, the non-private run and the DP runs; writes
``bench/results/dp_quality.{json,png}`` and prints a markdown table.

    python bench/dp_report.py --baselines bench/results/quality.json \\
        --run "non-private=bench/results/quality-rebase.json" \\
        --run "example ε=8=bench/results/quality-dp-example-eps8.json" \\
        --run "example ε=1=bench/results/quality-dp-example-eps1.json"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from trainer.plots import plot_heldout_loss

SETTINGS = ("corpus", "clients", "per_round", "rounds", "local_steps", "batch_size", "seq_len", "lr", "r_min", "r_max")


def last5(records: list[dict]) -> float:
    return float(np.mean([r["heldout_loss"] for r in sorted(records, key=lambda r: r["round"])[-5:]]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baselines", type=Path, required=True, help="quality.json with homlora and homlora-max")
    p.add_argument("--run", action="append", required=True, help="LABEL=PATH of a hetlora-rebase quality run")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    base = json.loads(args.baselines.read_text())
    reference = {k: base["config"][k] for k in SETTINGS}
    curves: dict[str, list[dict]] = {}
    for name in ("homlora", "homlora-max"):
        curves[name] = [r for r in base["records"] if r["strategy"] == name]
    eps: dict[str, float | None] = {}
    for spec in args.run:
        label, path = spec.rsplit("=", 1)
        result = json.loads(Path(path).read_text())
        mine = {k: result["config"][k] for k in SETTINGS}
        if mine != reference:
            raise SystemExit(f"{path} ran another configuration: {mine} vs {reference}")
        records = [r for r in result["records"] if r["strategy"] == "hetlora-rebase"]
        curves[f"hetlora-rebase ({label})"] = records
        eps[label] = max((r.get("example_epsilon_max") or 0.0 for r in records), default=0.0) or None
    low, high = last5(curves["homlora"]), last5(curves["homlora-max"])
    base = next(r["heldout_loss"] for r in curves["homlora"] if r["round"] == 0)  # the untrained base model
    private_free = next((v for k, v in curves.items() if "non-private" in k), None)
    free_gain = base - last5(private_free) if private_free else None
    rows = []
    for name, records in curves.items():
        loss = last5(records)
        label = name.split("(", 1)[1].rstrip(")") if "(" in name else None
        rows.append(
            {
                "run": name,
                "last5_loss": loss,
                "final_loss": sorted(records, key=lambda r: r["round"])[-1]["heldout_loss"],
                "gap_closed_last5": (low - loss) / (low - high),
                "share_of_non_private_gain": (base - loss) / free_gain if free_gain else None,
                "example_epsilon_max": eps.get(label) if label else None,
            }
        )
    plot_records = [{**r, "strategy": name} for name, records in curves.items() for r in records]
    png = plot_heldout_loss(plot_records, args.out / "dp_quality.png", title="HetLoRA with differential privacy")
    (args.out / "dp_quality.json").write_text(
        json.dumps({"benchmark": "dp_quality", "config": reference, "delta": 1e-6, "rows": rows}, indent=1)
    )
    print(f"base model: {base:.4f}")
    print(
        "| run | last-5 loss | final loss | gap closed (r=2 → r=32) | gain kept vs non-private | ε (example, worst) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        e = f"{r['example_epsilon_max']:.2f}" if r["example_epsilon_max"] else "–"
        kept = f"{r['share_of_non_private_gain']:.0%}" if r["share_of_non_private_gain"] is not None else "–"
        losses = f"{r['last5_loss']:.4f} | {r['final_loss']:.4f}"
        print(f"| {r['run']} | {losses} | {r['gap_closed_last5']:.0%} | {kept} | {e} |")
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
