"""`make bench-load`: the real services as processes under N devices; where the control plane gives way.

For each N in ``--devices``: a fresh PKI and registry with N enrolled devices (ranks uniform in [2, r_max]),
the aggregator and the orchestrator started with `hetlora serve` (mTLS, secure aggregation on), and the devices
driven from ``--processes`` worker processes (``bench/load_devices.py``: the real device agent, synthetic
updates of the model's real LoRA shapes). Reports per N: rounds committed, seconds per round from plan to
commit (synthetic devices do not train, so this is the server side plus masking), devices dropped with no
injected faults, RPC latency p50/p99 by method, the services' CPU seconds and peak RSS, and bytes up per
device by rank.

    python bench/load.py --devices 20,60 --per-round 10 --json bench/results/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from services.pki import CertificateAuthority, identity_of, init_pki  # noqa: E402
from services.registry import DeviceRegistry  # noqa: E402
from trainer.ranks import DeviceProfile  # noqa: E402

ROUND_LINE = re.compile(
    r"^(\S+ \S+) .*round (\d+) (?:\(id \d+\): cohort|committed version \d+ \((\d+) reported, (\d+) dropped)"
)


def enroll(folder: Path, n: int, r_max: int) -> list[dict]:
    """N devices in the registry with certificates on disk, as `hetlora device enroll` leaves them."""
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


def start(argv: list[str], log: Path, ready: str = "READY", timeout_s: float = 180) -> tuple[subprocess.Popen, dict]:
    """A process whose READY line's key=value pairs come back (its output goes to ``log``)."""
    out = open(log, "w")  # noqa: SIM115 - the process owns it until the harness stops it
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for line in log.read_text().splitlines():
            if line.startswith(ready):
                return proc, dict(kv.split("=", 1) for kv in line.split()[1:])
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:5]} exited with {proc.returncode}; see {log}")
        time.sleep(0.2)  # polling a child's log file: there is no pipe to block on
    raise TimeoutError(f"{argv[:5]} not ready in {timeout_s:.0f} s; see {log}")


def usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MiB of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


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


def rounds_from_log(log: Path) -> list[dict]:
    """Per round: seconds from plan to commit and devices dropped, from the orchestrator's log lines."""
    planned, rounds = {}, []
    for line in log.read_text().splitlines():
        m = ROUND_LINE.match(line)
        if not m:
            continue
        at = time.mktime(time.strptime(m[1].split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(m[1].split(",")[1]) / 1000
        if m[3] is None:
            planned[int(m[2])] = at
        else:
            rounds.append(
                {"round": int(m[2]), "seconds": at - planned[int(m[2])], "reported": int(m[3]), "dropped": int(m[4])}
            )
    return rounds


def run_once(n: int, args: argparse.Namespace) -> dict:
    """One deployment under ``n`` devices until its rounds are done (or ``--timeout``)."""
    folder = Path(tempfile.mkdtemp(prefix=f"hetlora-load-{n}-"))
    init_pki(folder / "pki")
    devices = enroll(folder, n, args.r_max)
    cli = [sys.executable, "-m", "services.cli", "serve"]
    tls = ["--pki", str(folder / "pki"), "--port", "0", "--metrics-port", "0"]
    agg, agg_ready = start([*cli, "aggregator", *tls], folder / "aggregator.log")
    orch_argv = [*cli, "orchestrator", *tls, "--registry", str(folder / "registry.db"), "--store",
                 str(folder / "store"), "--aggregator", f"127.0.0.1:{agg_ready['port']}", "--model", args.model,
                 "--rounds", str(args.rounds),
                 "--per-round", str(min(args.per_round, n)), "--overselect", "1.0", "--r-max", str(args.r_max),
                 "--stage-timeout", "120", "--round-deadline", str(args.timeout)]  # fmt: skip
    orch, orch_ready = start(orch_argv, folder / "orchestrator.log")
    workers = []
    started = time.monotonic()
    for w in range(args.processes):
        manifest = folder / f"worker-{w}.json"
        mine = devices[w :: args.processes]
        orchestrator = f"127.0.0.1:{orch_ready['port']}"
        ca = str(folder / "pki" / "ca.crt")
        manifest.write_text(
            json.dumps({"ca": ca, "devices": mine, "timeout_s": args.timeout, "orchestrator": orchestrator})
        )
        argv = [sys.executable, str(ROOT / "bench" / "load_devices.py"), "--manifest", str(manifest), "--model",
                args.model, "--out", str(folder / f"worker-{w}.out.json")]  # fmt: skip
        workers.append(start(argv, folder / f"worker-{w}.log", timeout_s=300)[0])
    try:
        while orch.poll() is None and time.monotonic() - started < args.timeout:
            if "DONE version=" in (folder / "orchestrator.log").read_text():
                break
            time.sleep(1.0)  # polling the orchestrator's log for its DONE line
        services = {"orchestrator": orch, "aggregator": agg}
        cost = {name: dict(zip(("cpu_s", "peak_rss_mib"), usage(p.pid), strict=True)) for name, p in services.items()}
        rpc = {
            "orchestrator": latencies(orch_ready["metrics_port"]),
            "aggregator": latencies(agg_ready["metrics_port"]),
        }
        for p in workers:  # devices leave when they hear every round is done (their next check-in)
            p.wait(timeout=60)
    finally:
        for p in (*workers, orch, agg):
            p.terminate()
        for p in (*workers, orch, agg):
            p.wait(timeout=30)
    logs: dict[str, dict] = {}
    for w in range(args.processes):
        out = folder / f"worker-{w}.out.json"
        logs.update(json.loads(out.read_text()) if out.exists() else {})
    by_rank: dict[int, list[int]] = {}
    for d in logs.values():
        by_rank.setdefault(d["rank"], []).extend(b for b in d["up_bytes"] if b)
    rounds = rounds_from_log(folder / "orchestrator.log")
    return {
        "devices": n,
        "per_round": min(args.per_round, n),
        "rounds_committed": len(rounds),
        "wall_s": time.monotonic() - started,
        "seconds_per_round": [r["seconds"] for r in rounds],
        "dropped": sum(r["dropped"] for r in rounds),
        "device_errors": sorted({e for d in logs.values() for e in d["errors"]})[:5],
        "services": cost,
        "rpc_seconds": rpc,
        "bytes_up_per_round_by_rank": {r: mean(b) for r, b in sorted(by_rank.items()) if b},
        "logs": str(folder),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="20,60", help="comma-separated device counts, one deployment each")
    p.add_argument("--per-round", type=int, default=10, help="cohort size (capped at the device count)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--r-max", type=int, default=32)
    p.add_argument("--model", default="tiny", help="whose LoRA shapes: tiny, smollm2 (real shapes), a path")
    p.add_argument("--processes", type=int, default=2, help="worker processes the devices are spread over")
    p.add_argument("--timeout", type=float, default=900, help="seconds one deployment may take")
    p.add_argument("--json", type=Path, default=Path("bench/results/load.json"))
    args = p.parse_args()
    results = []
    for n in (int(x) for x in args.devices.split(",")):
        r = run_once(n, args)
        spr = r["seconds_per_round"]
        print(f"{n:>5} devices: {r['rounds_committed']}/{args.rounds} rounds, "
              f"{mean(spr) if spr else float('nan'):.1f} s/round, {r['dropped']} dropped", flush=True)  # fmt: skip
        results.append(r)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "load", "machine": machine, "config": vars(args), "results": results}
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
