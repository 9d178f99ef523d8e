"""`make bench-load`: the real services as processes under N devices; where the control plane gives way.

For each N in ``--devices`` and each F in ``--fail-rate``: a fresh PKI and registry with N enrolled devices
(ranks spread evenly over [2, r_max]), the aggregator and the orchestrator started with `hetlora serve` (mTLS,
secure aggregation on), and the devices driven from ``--processes`` worker processes
(``bench/load_devices.py``: the real device agent, synthetic updates of the model's real LoRA shapes).

Reported per (N, F), into ``--json``:
  * rounds committed and aborted, seconds per round from plan to commit, devices dropped;
  * server-side seconds per round: plan → commit minus the slowest device's "training" (synthetic devices do
    not train, so this is plan → commit less the few ms of noise they add: the services, the devices' masking
    and the network; what the issue calls server-side);
  * the same cohort size, rank mix and vector sizes through ``secure_agg.simulate_round`` in one process
    (wall seconds, and its server's CPU part), and server-side seconds / that wall time;
  * RSS of the orchestrator and the aggregator after every committed round, with a least-squares slope in
    MiB per round over the rounds after the first (flat = memory follows the cohort, not the rounds run);
  * with F > 0, devices killed per round (by where they died) and whether every round still committed;
  * RPC latency p50/p99 by method, the services' CPU seconds and peak RSS, bytes up per device by rank, and
    each worker's peak threads, open fds and RSS (what 2,000 devices with a channel each would exhaust).

Fault injection: in every round ``round(F × cohort)`` devices die at a random SecAgg+ stage or before their
report, reproducibly from ``--seed`` (see ``bench/load_devices.py``). A stage a dead device was expected in
closes only at its deadline, so with faults each round takes up to 5 × ``--stage-timeout``; ``auto`` sizes it
from the fault-free pass at the same N (2 × its slowest stage, timed from when each stage's message first
reached a device) so that no live device is cut off.

    python bench/load.py --devices 20,60 --per-round 10 --json bench/results/load.json
    python bench/load.py --devices 40 --per-round 20 --model smollm2 --rounds 5 --fail-rate 0,0.3 --fault-rounds 2
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # ships no stubs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from services.pki import CertificateAuthority, identity_of, init_pki  # noqa: E402
from services.registry import DeviceRegistry  # noqa: E402
from trainer.ranks import DeviceProfile  # noqa: E402
from trainer.targets import BUILTIN_TARGETS  # noqa: E402

STAMP = r"^(\S+ \S+) \S+ \w+ "  # "2026-12-04 03:00:01,250 hetlora.orchestrator INFO "
PLANNED = re.compile(STAMP + r"round (\d+) \(id (\d+)\): cohort .*, ranks (\{.*\})\s*$")
COMMITTED = re.compile(STAMP + r"round (\d+) committed version \d+ \((\d+) reported, (\d+) dropped\)")
FAILED = re.compile(STAMP + r"round (\d+) failed[,;] (.*)$")
# Kill points where a device's masked input never reaches the sum (the server counts it dropped; "report" is
# before the report, which the agent sends before its masked upload); after its masked input went in
# (consistency check, unmask) SecAgg+ still sums it.
STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")
OUT_OF_SUM = ("report", *STAGES[:3])
# The device workers (not the services) hand big arrays back to the OS when freed, and keep few malloc arenas:
# a worker's devices each hold ~100 MB for a round at SmolLM2 shapes, and with glibc's defaults the freed
# memory of 25 concurrent rounds stays resident (measured: peak RSS 20 % lower, same s/round).
WORKER_MALLOC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
DEVICES_PER_WORKER = 500  # --processes 0: one worker per this many devices (2 to 8 workers)
DEFAULTS: dict[str, Any] = {
    "per_round": 10, "rounds": 3, "fault_rounds": None, "r_max": 32, "model": "tiny", "processes": 2,
    "timeout": 900.0, "fail_rate": 0.0, "seed": 0, "stage_timeout": 120.0,
    "target_modules": ",".join(BUILTIN_TARGETS), "reference": True, "device_slots": 0,
}  # fmt: skip


def enroll(folder: Path, n: int, r_max: int) -> list[dict]:
    """N devices in the registry with certificates on disk, as `hetlora device enroll` leaves them.

    ~5 ms a device (an EC key, a certificate, two registry writes): 2,000 devices in about 10 s.
    """
    ca, registry = CertificateAuthority.load(folder / "pki"), DeviceRegistry(folder / "registry.db")
    devices = []
    for i in range(n):
        name, rank = f"load-{i:04d}", 2 + (i * 7919) % (r_max - 1)
        cert, key = ca.issue(name, "device")
        token, _ = registry.issue_token(name, 600, 0)
        registry.complete_enrollment(token, name, identity_of(cert).serial, DeviceProfile(4000, 100), rank, 1)
        (folder / f"{name}.crt").write_bytes(cert)
        (folder / f"{name}.key").write_bytes(key)
        devices.append(
            {"name": name, "rank": rank, "cert": str(folder / f"{name}.crt"), "key": str(folder / f"{name}.key")}
        )
    registry.close()
    return devices


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None, stdin: int | None = None) -> subprocess.Popen:
    """A child process whose stdout and stderr go to ``log`` (``env`` adds to this process's environment)."""
    out = open(log, "w")  # noqa: SIM115 - the process owns it until the harness stops it
    env = {**(env or {}), **os.environ, "PYTHONUNBUFFERED": "1"}  # what the caller's environment sets wins
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=stdin)


def _argv(proc: subprocess.Popen) -> str:
    return " ".join(map(str, proc.args[:5] if isinstance(proc.args, list) else [proc.args]))


def wait_ready(proc: subprocess.Popen, log: Path, ready: str = "READY", timeout_s: float = 180) -> dict:
    """The key=value pairs of the process's READY line, once it printed one."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for line in log.read_text().splitlines():
            if line.startswith(ready):
                return dict(kv.split("=", 1) for kv in line.split()[1:])
        if proc.poll() is not None:
            raise RuntimeError(f"{_argv(proc)} exited with {proc.returncode}; see {log}")
        time.sleep(0.2)  # polling a child's log file: there is no pipe to block on
    raise TimeoutError(f"{_argv(proc)} not ready in {timeout_s:.0f} s; see {log}")


def start(argv: list[str], log: Path, ready: str = "READY", timeout_s: float = 180) -> tuple[subprocess.Popen, dict]:
    """A process whose READY line's key=value pairs come back (its output goes to ``log``)."""
    proc = spawn(argv, log)
    return proc, wait_ready(proc, log, ready, timeout_s)


def usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MiB of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def rss_mib(pid: int) -> float:
    """Resident memory of a live process now (not its peak), in MiB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def slope(xs: list[int], ys: list[float], skip: int = 1) -> float | None:
    """Least-squares MiB per round over the rounds after the first ``skip`` (the first pays one-off
    allocations); None with fewer than two rounds left to fit."""
    if len(xs) - skip < 2:
        return None
    return float(np.polyfit(np.asarray(xs[skip:], float), np.asarray(ys[skip:], float), 1)[0])


def latencies(metrics_port: str) -> dict[str, dict[str, float]]:
    """p50/p99 (upper bucket bounds) of each method's handling time, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "hetlora_grpc_request_duration_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                buckets.setdefault(s.labels["method"], []).append((float(s.labels["le"]), s.value))
    out = {}
    for method, points in buckets.items():
        points.sort()
        total = points[-1][1]
        if total:
            out[method] = {f"p{q}": next(le for le, c in points if c >= total * q / 100) for q in (50, 99)}
            out[method]["calls"] = total
    return out


def _stamp(text: str) -> float:
    day, ms = text.split(",")
    return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


def attempts_from_log(log: Path) -> list[dict]:
    """Every round attempt in the orchestrator's log: index, round id, cohort ranks, how it ended and when.

    An attempt that failed (secure aggregation aborted) is re-run by the orchestrator under a new id; ``state``
    is ``committed``, ``failed`` or ``unfinished`` (the deployment stopped first).
    """
    attempts: list[dict] = []
    current: dict[int, dict] = {}  # round index -> its latest attempt (attempts of one index run one at a time)
    for line in log.read_text().splitlines():
        if m := PLANNED.match(line):
            a: dict[str, Any] = {"round": int(m[2]), "id": int(m[3]), "state": "unfinished"}
            a.update(planned_at=_stamp(m[1]), ranks=ast.literal_eval(m[4]))
            attempts.append(a)
            current[a["round"]] = a
        elif (m := COMMITTED.match(line)) and int(m[2]) in current:
            a = current.pop(int(m[2]))
            a.update(state="committed", ended_at=_stamp(m[1]), reported=int(m[3]), dropped=int(m[4]))
            a["seconds"] = a["ended_at"] - a["planned_at"]
        elif (m := FAILED.match(line)) and int(m[2]) in current:
            a = current.pop(int(m[2]))
            a.update(state="failed", ended_at=_stamp(m[1]), detail=m[3][:300])
            a["seconds"] = a["ended_at"] - a["planned_at"]
    return attempts


def rounds_from_log(log: Path) -> list[dict]:
    """Per committed round: seconds from plan to commit and devices dropped, from the orchestrator's log lines."""
    return [
        {"round": a["round"], "seconds": a["seconds"], "reported": a["reported"], "dropped": a["dropped"]}
        for a in attempts_from_log(log)
        if a["state"] == "committed"
    ]


class LogFollower:
    """The lines a growing log gained since the last call (only whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


def auto_processes(n: int) -> int:
    """Enough workers that none drives more than ~500 devices (~2.5 threads and fds each), at least 2 (the
    devices' masking uses both cores), at most 8: each worker holds its own copy of the base model and imports
    (~0.5 GB), and the cores, not the worker count, bound how fast the devices mask."""
    return min(8, max(2, math.ceil(n / DEVICES_PER_WORKER)))


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one, inherited by the services and workers: the orchestrator holds one
    connection per checked-in device, which at 2,000 devices is past the common soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_once(n: int, args: argparse.Namespace) -> dict:
    """One deployment under ``n`` devices (``args.fail_rate`` of each cohort killed) until its rounds are done."""
    args = argparse.Namespace(**{**DEFAULTS, **vars(args)})
    fds = raise_fd_limit()
    rounds = args.rounds if not args.fail_rate or args.fault_rounds is None else args.fault_rounds
    processes = args.processes or auto_processes(n)
    folder = Path(tempfile.mkdtemp(prefix=f"hetlora-load-{n}-"))
    init_pki(folder / "pki")
    t0 = time.monotonic()
    devices = enroll(folder, n, args.r_max)
    enroll_s = time.monotonic() - t0
    cli = [sys.executable, "-m", "services.cli", "serve"]
    tls = ["--pki", str(folder / "pki"), "--port", "0", "--metrics-port", "0"]
    agg, agg_ready = start([*cli, "aggregator", *tls], folder / "aggregator.log")
    orch_argv = [*cli, "orchestrator", *tls, "--registry", str(folder / "registry.db"), "--store",
                 str(folder / "store"), "--aggregator", f"127.0.0.1:{agg_ready['port']}", "--model", args.model,
                 "--target-modules", args.target_modules, "--rounds", str(rounds), "--seed", str(args.seed),
                 "--per-round", str(min(args.per_round, n)), "--overselect", "1.0", "--r-max", str(args.r_max),
                 "--stage-timeout", str(args.stage_timeout), "--round-deadline", str(args.timeout)]  # fmt: skip
    orch, orch_ready = start(orch_argv, folder / "orchestrator.log")
    services = {"orchestrator": orch, "aggregator": agg}
    rss: dict[str, list] = {"round": [], "orchestrator": [], "aggregator": []}
    cpu: dict[str, list] = {"t_s": [], "orchestrator": [], "aggregator": []}  # cumulative, at the same moments
    at_start = {name: rss_mib(p.pid) for name, p in services.items()}
    workers = []
    started = time.monotonic()
    for w in range(processes):
        manifest = folder / f"worker-{w}.json"
        mine = devices[w::processes]  # round-robin: every worker gets the whole rank mix
        manifest.write_text(json.dumps({
            "ca": str(folder / "pki" / "ca.crt"), "devices": mine, "timeout_s": args.timeout,
            "orchestrator": f"127.0.0.1:{orch_ready['port']}", "aggregator": f"127.0.0.1:{agg_ready['port']}",
            "fail_rate": args.fail_rate, "seed": args.seed,
            "compute_slots": args.device_slots,
        }))  # fmt: skip
        argv = [sys.executable, str(ROOT / "bench" / "load_devices.py"), "--manifest", str(manifest), "--model",
                args.model, "--out", str(folder / f"worker-{w}.out.json")]  # fmt: skip
        workers.append(spawn(argv, folder / f"worker-{w}.log", WORKER_MALLOC, stdin=subprocess.PIPE))
    try:
        for w, p in enumerate(workers):  # all load the model at once; then each builds its devices' agents
            wait_ready(p, folder / f"worker-{w}.log", timeout_s=300)
        for p in workers:  # then all check in together
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.close()
        follower, done = LogFollower(folder / "orchestrator.log"), False
        while not done and orch.poll() is None and time.monotonic() - started < args.timeout:
            for line in follower.lines():
                if m := COMMITTED.match(line):  # sampled within ~0.2 s of the commit
                    rss["round"].append(int(m[2]))
                    cpu["t_s"].append(round(time.monotonic() - started, 2))
                    for name, p in services.items():
                        rss[name].append(rss_mib(p.pid))
                        cpu[name].append(usage(p.pid)[0])
                done = done or line.startswith("DONE version=")
            time.sleep(0.2)  # following the orchestrator's log for commits and its DONE line
        cost = {name: dict(zip(("cpu_s", "peak_rss_mib"), usage(p.pid), strict=True)) for name, p in services.items()}
        rpc = {
            "orchestrator": latencies(orch_ready["metrics_port"]),
            "aggregator": latencies(agg_ready["metrics_port"]),
        }
        for p in workers:  # every round is done: the workers write their devices' logs and exit
            p.terminate()
        for p in workers:
            p.wait(timeout=60)
    finally:
        for p in (*workers, orch, agg):
            p.terminate()
        for p in (*workers, orch, agg):
            p.wait(timeout=30)
    wall_s = time.monotonic() - started
    logs: dict[str, dict] = {}
    worker_stats = []
    for w in range(processes):
        out = folder / f"worker-{w}.out.json"
        if out.exists():
            report = json.loads(out.read_text())
            logs.update(report["devices"])
            worker_stats.append(report["worker"])
    by_rank: dict[int, list[int]] = {}
    for d in logs.values():
        by_rank.setdefault(d["rank"], []).extend(b for b in d["up_bytes"] if b)
    attempts = attempts_from_log(folder / "orchestrator.log")
    _join_devices(attempts, logs)
    committed = [a for a in attempts if a["state"] == "committed"]
    result: dict[str, Any] = {
        "devices": n,
        "per_round": min(args.per_round, n),
        "fail_rate": args.fail_rate,
        "stage_timeout_s": args.stage_timeout,
        "rounds_requested": rounds,
        "rounds_committed": len(committed),
        "rounds_aborted": sum(a["state"] == "failed" for a in attempts),
        "wall_s": wall_s,
        "enroll_s": enroll_s,
        "processes": processes,
        "device_slots": args.device_slots,
        "fd_limit": fds,
        "seconds_per_round": [a["seconds"] for a in committed],
        "server_side_s_per_round": [max(0.0, a["seconds"] - a["slowest_train_s"]) for a in committed],
        "dropped": sum(a["dropped"] for a in committed),
        "killed_per_round": [a["killed"] for a in attempts],
        "killed_by_stage": dict(sum((Counter(a["killed_at"]) for a in attempts), Counter())),
        "stage_seconds_max": {
            s: max((a["stage_seconds"][s] for a in committed if s in a["stage_seconds"]), default=None) for s in STAGES
        },
        "attempts": [{k: v for k, v in a.items() if k not in ("ranks", "planned_at", "ended_at")} for a in attempts],
        "device_errors": sorted({e for d in logs.values() for e in d["errors"]})[:5],
        # Devices whose own SecAgg+ client refused to continue (e.g. no live mask neighbour in a bucket): they
        # leave the round, and the agent raises past its own handling (the worker restarts them).
        "device_secagg_errors": sum(len(d.get("secagg_errors", [])) for d in logs.values()),
        "device_secagg_error_kinds": sorted({e for d in logs.values() for e in d.get("secagg_errors", [])})[:5],
        "services": cost,
        "rss_mib_at_start": at_start,
        "rss_mib_by_round": rss,
        "cpu_s_by_round": cpu,
        "rss_slope_mib_per_round": {name: slope(rss["round"], rss[name]) for name in services},
        # Over the second half only: the aggregator keeps its last 8 finished rounds (for retried result
        # calls), so its RSS climbs for ~9 rounds and is flat after; this slope shows the flat part.
        "rss_slope_late_mib_per_round": {
            name: slope(rss["round"], rss[name], len(rss["round"]) // 2) for name in services
        },
        "rpc_seconds": rpc,
        "bytes_up_per_round_by_rank": {r: mean(b) for r, b in sorted(by_rank.items()) if b},
        "workers": worker_stats,
        "logs": str(folder),
    }
    if args.fail_rate:
        result["fault_check"] = fault_check(result, attempts)
    result["_cohort_ranks"] = sorted(committed[0]["ranks"].values()) if committed else []
    return result


def stage_windows(attempt: dict, opened: dict[str, float]) -> dict[str, float]:
    """Seconds each SecAgg+ stage's deadline had to cover in this attempt: from the stage opening (its message
    first reaching a device; the first stage opens with the round, so from the plan) to the next one opening
    (the last one: to the commit). A stage timeout below one of these would have cut live devices off."""
    marks = [attempt["planned_at"], *(opened.get(s) for s in STAGES[1:]), attempt.get("ended_at")]
    return {
        s: round(b - a, 3)
        for s, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)
        if a is not None and b is not None and attempt["state"] == "committed"
    }


def _join_devices(attempts: list[dict], logs: dict[str, dict]) -> None:
    """Add the devices' side to each attempt: who was killed where, the slowest synthetic "training", and when
    each stage opened."""
    killed: dict[int, list[str]] = {}
    opened: dict[int, dict[str, float]] = {}
    for d in logs.values():
        for k in d.get("killed", []):
            killed.setdefault(int(k["round_id"]), []).append(k["at"])
        for rid, stages in d.get("stage_at", {}).items():
            first = opened.setdefault(int(rid), {})
            for stage, t in stages.items():
                first[stage] = min(first.get(stage, t), t)
    for a in attempts:
        a["stage_seconds"] = stage_windows(a, opened.get(a["id"], {}))
        a["killed_at"] = sorted(killed.get(a["id"], []))
        a["killed"] = len(a["killed_at"])
        a["cohort"] = len(a["ranks"])
        a["slowest_train_s"] = max((d["train_s"].get(str(a["id"]), 0.0) for d in logs.values()), default=0.0)
        if a["state"] == "committed":
            # Drops the kills do not explain: live devices a stage deadline cut off (--stage-timeout too short).
            a["unexplained_drops"] = a["dropped"] - sum(s in OUT_OF_SUM for s in a["killed_at"])


def fault_check(result: dict, attempts: list[dict]) -> dict:
    """The issue's check, "with F of the cohort killed at random stages the round still commits", per deployment."""
    fractions = [a["killed"] / a["cohort"] for a in attempts if a["cohort"]]
    return {
        "fail_rate": result["fail_rate"],
        "killed_fraction_mean": mean(fractions) if fractions else 0.0,
        "rounds_requested": result["rounds_requested"],
        "rounds_committed": result["rounds_committed"],
        "rounds_aborted": result["rounds_aborted"],
        "unexplained_drops": sum(a.get("unexplained_drops", 0) for a in attempts),
        "every_round_committed": result["rounds_committed"] == result["rounds_requested"]
        and result["rounds_aborted"] == 0,
    }


def reference_round(model: str, target_modules: str, ranks: list[int], seed: int = 0) -> dict:
    """``secure_agg.simulate_round`` for a cohort with these ranks, laid out as the orchestrator lays it out.

    Same shapes (the model's adapted layers), bucket edges, levels, SecAgg+ requirements and codec as
    ``services.orchestrator.coordinator``; all clients and the server in this one process, one after another.
    """
    from secure_agg import ClientInput, FixedPointCodec, RoundConfig, simulate_round
    from services.orchestrator.coordinator import RoundSettings
    from services.secure_sum import bucket_edges, factor_layout
    from trainer.model import load_base_model
    from trainer.peft_bridge import adapted_modules
    from trainer.targets import parse_target_spec

    shapes = adapted_modules(load_base_model(model), parse_target_spec(target_modules))
    settings = RoundSettings(rounds=1, per_round=len(ranks))
    edges = bucket_edges(ranks)
    layout = factor_layout(shapes, edges)
    levels = {i: edges.index(r) for i, r in enumerate(ranks)}
    config = RoundConfig.create(1, list(levels), layout, levels, settings.requirements)
    codec = FixedPointCodec(settings.secure.value_bound, 1.0, len(ranks))
    rng = np.random.default_rng(seed)
    inputs = {c: ClientInput((1e-3 * rng.standard_normal(layout.dim)).astype(np.float32), 1.0) for c in levels}
    t0 = time.perf_counter()
    report = simulate_round(config, inputs, codec, rng=rng)
    wall = time.perf_counter() - t0
    return {
        "simulate_round_wall_s": wall,
        "simulate_round_server_cpu_s": report.server_cpu_s,
        "simulate_round_clients_cpu_s": sum(report.client_cpu_s.values()),
        "completed": report.completed,
        "cohort": len(ranks),
        "vector_words": layout.total,
        "upload_bytes_mean": mean(report.upload_bytes.values()),
    }


def _stage_timeout(text: str, fail_rate: float, fault_free: dict | None) -> float:
    """``--stage-timeout``: a number, or auto (120 s; with faults 2 × the slowest stage of the fault-free pass)."""
    if text != "auto":
        return float(text)
    if not fail_rate or not fault_free or not fault_free["seconds_per_round"]:
        return float(DEFAULTS["stage_timeout"])
    stages = [s for s in fault_free["stage_seconds_max"].values() if s is not None]
    slowest = 2 * max(stages) if stages else 1.5 * max(fault_free["seconds_per_round"])
    return round(max(10.0, slowest), 1)


def plot(results: list[dict], path: Path) -> Path | None:
    """Rounds vs RSS per service, one line per deployment (skipped without matplotlib or samples)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    drawn = [r for r in results if r["rss_mib_by_round"]["round"]]
    if not drawn:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
    for ax, service in zip(axes, ("orchestrator", "aggregator"), strict=True):
        for r in drawn:
            s = r["rss_mib_by_round"]
            ax.plot(s["round"], s[service], marker="o", ms=3, label=f"{r['devices']} dev, F={r['fail_rate']:g}")
        ax.set(title=service, xlabel="round committed", ylabel="RSS (MiB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _rates(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",")]
    if any(not 0 <= f < 1 for f in rates):
        raise argparse.ArgumentTypeError(f"fail rates must be in [0, 1), got {text}")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="20,60", help="comma-separated device counts, one deployment each")
    p.add_argument("--per-round", type=int, default=10, help="cohort size (capped at the device count)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per deployment (>= 3 for an RSS slope)")
    p.add_argument(
        "--fault-rounds",
        type=int,
        default=None,
        help="rounds for the F > 0 passes (default --rounds): each costs ~5 stage timeouts",
    )
    p.add_argument("--r-max", type=int, default=32, help="ranks of the devices are spread over [2, r_max]")
    p.add_argument("--model", default="tiny", help="whose LoRA shapes: tiny, smollm2 (real shapes), a path")
    p.add_argument(
        "--target-modules",
        default=DEFAULTS["target_modules"],
        help="layers that get LoRA, passed to the orchestrator (its default)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help=f"worker processes the devices are spread over (0 = one per {DEVICES_PER_WORKER}, 2 to 8)",
    )
    p.add_argument(
        "--fail-rate",
        type=_rates,
        default=[0.0],
        help="comma-separated fractions of each cohort killed per round, one deployment each (0 = none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds cohort sampling and which devices die where")
    p.add_argument(
        "--device-slots",
        type=int,
        default=0,
        help="per worker, at most this many devices at once in a round's compute-only parts (training through "
        "encoding, masking through upload): bounds the workers' memory at 200 SmolLM2 devices; 0 = no limit",
    )
    p.add_argument(
        "--stage-timeout",
        default="auto",
        help="seconds a SecAgg+ stage waits for devices; auto: 120 s, with faults 2 x the slowest stage of "
        "the fault-free pass at the same N (put 0 first in --fail-rate), at least 10 s",
    )
    p.add_argument(
        "--fault-stage-timeout",
        default=None,
        help="--stage-timeout for the passes with faults (default: the same): a stage a killed device was "
        "expected in waits out its deadline, so a long fault-free timeout makes each fault round take 5 x as long",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds one deployment may take")
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip timing secure_agg.simulate_round for the same cohort (slow at SmolLM2 x 200)",
    )
    p.add_argument("--json", type=Path, default=Path("bench/results/load.json"), help="where the results go")
    p.add_argument("--plot", type=Path, default=None, help="rounds vs RSS PNG (default: next to --json, -rss.png)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results, references = [], {}
    for n in (int(x) for x in args.devices.split(",")):
        fault_free = None
        for f in args.fail_rate:
            run = argparse.Namespace(**{**vars(args), "fail_rate": f})
            timeout = args.fault_stage_timeout if f and args.fault_stage_timeout else args.stage_timeout
            run.stage_timeout = _stage_timeout(timeout, f, fault_free)
            r = run_once(n, run)
            ranks = r.pop("_cohort_ranks")
            if args.reference and ranks and n not in references:
                references[n] = reference_round(args.model, args.target_modules, ranks, args.seed)
            if n in references:
                r["reference"] = references[n]
                server_side = r["server_side_s_per_round"]
                ref = references[n]["simulate_round_wall_s"]
                # Only meaningful without faults: with them a round mostly waits out stage deadlines.
                meaningful = server_side and ref and not f
                r["ratio_vs_simulate_round"] = mean(server_side) / ref if meaningful else None
            fault_free = r if not f else fault_free
            results.append(r)
            print(summary(r), flush=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "load", "machine": machine, "config": vars(args), "results": results}
    png = plot(results, args.plot or args.json.with_name(args.json.stem + "-rss.png"))
    if png:
        report["plot"] = str(png)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.json}" + (f" and {png}" if png else ""))
    return 0


def summary(r: dict) -> str:
    """One line per deployment for the terminal."""
    spr, side = r["seconds_per_round"], r["server_side_s_per_round"]
    slopes = r["rss_slope_mib_per_round"]
    text = (
        f"{r['devices']:>5} devices, F={r['fail_rate']:g}: {r['rounds_committed']}/{r['rounds_requested']} rounds "
        f"({r['rounds_aborted']} aborted), {mean(spr) if spr else float('nan'):.1f} s/round "
        f"({mean(side) if side else float('nan'):.1f} server-side), {r['dropped']} dropped"
    )
    if r["fail_rate"]:
        text += f", killed/round {r['killed_per_round']}, commits: {r['fault_check']['every_round_committed']}"
    text += ", RSS slope MiB/round " + " ".join(
        f"{k[:4]} {v:+.2f}" if v is not None else f"{k[:4]} n/a" for k, v in slopes.items()
    )
    if r.get("ratio_vs_simulate_round") is not None:
        text += f", vs simulate_round x{r['ratio_vs_simulate_round']:.2f}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
