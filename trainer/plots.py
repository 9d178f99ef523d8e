"""PNG plots of experiment records: people would rather look at a loss curve than read a table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_heldout_loss(records: Sequence[dict], path: Path, title: str = "Held-out loss per round") -> Path:
    """One curve per strategy (mean over seeds when several), held-out loss against round."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    by_strategy: dict[str, dict[int, list[float]]] = {}
    for r in records:
        by_strategy.setdefault(r["strategy"], {}).setdefault(int(r["round"]), []).append(float(r["heldout_loss"]))
    for name, rounds in by_strategy.items():
        xs = sorted(rounds)
        ys = [sum(rounds[x]) / len(rounds[x]) for x in xs]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
