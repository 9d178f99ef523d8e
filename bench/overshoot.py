"""Does a strategy overshoot when few devices train the top components? A check on finished quality runs.

Per-component means (damping 0) give a component that only the round's strongest device trained that
device's whole change. In the reference configuration the delta family fell behind over 30 rounds, and the
suspected cause is that overshoot: it should then show up as worse rounds exactly when the cohort's largest
rank stands far above the second largest. This script measures that from the records alone, no re-run:
per round t ≥ 2, the strategy's loss step minus the homogeneous r_max baseline's step on the same cohort
(``excess``), against the share of components only the top device trained (``solo``). A positive
correlation is the overshoot's signature; none says the per-round steps do not depend on the rank mix.

    python bench/overshoot.py bench/results/gpu/quality-gpu-candidates-chitchat-uniform_int.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

REFERENCE = "homlora-max"


def solo_share(ranks: Sequence[int], r_max: int) -> float:
    """Components that only the round's strongest device trained, as a share of r_max."""
    if not ranks:
        raise ValueError("a round needs at least one trained rank")
    top = sorted(ranks, reverse=True)
    second = top[1] if len(top) > 1 else 0
    return (top[0] - second) / r_max


def excess_steps(records: Sequence[Mapping], strategy: str, r_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(solo share, excess loss step) for every round t ≥ 2 of every seed both the strategy and the baseline ran.

    Round 1 is left out: every strategy starts from the same version 0 and its first step says little about
    aggregation.
    """
    loss: dict[tuple[str, int], dict[int, float]] = {}
    trained: dict[tuple[int, int], list[int]] = {}
    for r in records:
        loss.setdefault((r["strategy"], r["seed"]), {})[r["round"]] = r["heldout_loss"]
        if r["strategy"] == strategy and r["round"] > 0:
            trained[(r["seed"], r["round"])] = list(r["ranks_trained"].values())
    solo, excess = [], []
    for (name, seed), mine in sorted(loss.items()):
        base = loss.get((REFERENCE, seed))
        if name != strategy or base is None:
            continue
        for t in sorted(mine):
            if t < 2 or t - 1 not in mine or t not in base or t - 1 not in base or not trained.get((seed, t)):
                continue
            solo.append(solo_share(trained[(seed, t)], r_max))
            excess.append((mine[t] - mine[t - 1]) - (base[t] - base[t - 1]))
    return np.asarray(solo), np.asarray(excess)


def correlation(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson r with a 95 % interval (Fisher z); NaN where there are too few rounds or no spread in x."""
    n = int(x.size)
    if n < 4 or np.std(x) == 0 or np.std(y) == 0:
        return {"n": n, "r": math.nan, "low": math.nan, "high": math.nan}
    r = float(np.corrcoef(x, y)[0, 1])
    z, half = math.atanh(max(min(r, 0.999999), -0.999999)), 1.96 / math.sqrt(n - 3)
    return {"n": n, "r": r, "low": math.tanh(z - half), "high": math.tanh(z + half)}


def report(result: Mapping) -> dict[str, dict[str, float]]:
    """Per heterogeneous strategy: the correlation and the mean excess step above and below the median solo share."""
    records, r_max = result["records"], int(result["config"]["r_max"])
    out = {}
    for strategy in sorted({r["strategy"] for r in records} - {REFERENCE, "homlora"}):
        solo, excess = excess_steps(records, strategy, r_max)
        if solo.size == 0:
            continue
        high = solo >= np.median(solo)
        stats = correlation(solo, excess)
        stats["excess_high_solo"] = float(excess[high].mean())
        stats["excess_low_solo"] = float(excess[~high].mean()) if (~high).any() else math.nan
        out[strategy] = stats
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="quality result files (bench/quality.py or combine.py)")
    p.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = p.parse_args(argv)
    tables = {}
    for path in args.results:
        tables[str(path)] = table = report(json.loads(path.read_text()))
        print(f"{path}  (excess = loss step minus {REFERENCE}'s step; solo = components only the top device trained)")
        header = ("strategy", "rounds", "r", "95 % interval", "excess, high solo", "low solo")
        print("  {:24} {:>6} {:>6} {:>16} {:>18} {:>9}".format(*header))
        for name, s in table.items():
            interval = f"[{s['low']:+.2f}, {s['high']:+.2f}]"
            print(
                f"  {name:24} {s['n']:>6} {s['r']:>+6.2f} {interval:>16} "
                f"{s['excess_high_solo']:>+18.4f} {s['excess_low_solo']:>+9.4f}"
            )
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "overshoot", "tables": tables}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
