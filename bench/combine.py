"""Merge the per-job files of ``bench/parallel.py`` into one quality result per corpus and rank mix.

Each output has the shape ``bench/quality.py`` writes (config, summary, records), so ``bench/report.py`` reads
it. Homogeneous baselines run only under the first rank mix and are shared with the others (they ignore it).

    python bench/combine.py runs/gpu --out bench/results --prefix quality-gpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import HOMOGENEOUS, summarise

from trainer.plots import plot_heldout_loss

SETTINGS_IGNORED = ("strategies", "tag", "seeds", "ranks")


def load_jobs(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """Job files grouped by (corpus, rank mix); refuses to mix runs made with other settings."""
    groups: dict[tuple[str, str], list[dict]] = {}
    reference: dict | None = None
    for path in sorted(folder.glob("*.json")):
        job = json.loads(path.read_text())
        if job.get("benchmark") != "quality":
            continue
        settings = {k: v for k, v in job["config"].items() if k not in (*SETTINGS_IGNORED, "corpus")}
        if reference is None:
            reference = settings
        elif settings != reference:
            raise SystemExit(f"{path} was run with other settings than the first job; combine them separately")
        groups.setdefault((job["config"]["corpus"], job["config"]["ranks"]), []).append(job)
    return groups


def combine(groups: dict[tuple[str, str], list[dict]], out: Path, prefix: str) -> list[Path]:
    written = []
    for (corpus, ranks), jobs in sorted(groups.items()):
        records = [r for job in jobs for r in job["records"]]
        if not any(r["strategy"] in HOMOGENEOUS for r in records):
            mine = {r["seed"] for r in records}  # baselines only for the seeds this mix ran, so means compare
            for (c, _), others in groups.items():
                if c == corpus:
                    records += [
                        r
                        for job in others
                        for r in job["records"]
                        if r["strategy"] in HOMOGENEOUS and r["seed"] in mine
                    ]
        seeds = sorted({r["seed"] for r in records})
        config = {**jobs[0]["config"], "strategies": sorted({r["strategy"] for r in records}), "seeds": seeds}
        result = {
            "benchmark": "quality",
            "config": config,
            "machine": jobs[0]["machine"],
            "wall_s": sum(job["wall_s"] for job in jobs),
            "summary": summarise(records, config["rounds"]),
            "records": records,
        }
        path = out / f"{prefix}-{corpus}-{ranks}.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        title = f"SmolLM2-135M on {corpus}, ranks {ranks}: held-out loss ({len(seeds)} seeds)"
        plot_heldout_loss(records, path.with_suffix(".png"), title=title)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the --out folder of bench/parallel.py")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--prefix", default="quality-gpu")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in combine(load_jobs(args.folder), args.out, args.prefix):
        print(f"wrote {path} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
