"""`make up` / `make down`: the three services and a real Prometheus on this machine, left running.

`make up` creates a CA (once) under runs/up/, starts enrollment, aggregator and orchestrator on their default
ports with /metrics on 9101-9103, writes Prometheus' file-discovery targets and starts Prometheus (Debian's
`prometheus` package) on 127.0.0.1:9090 with the shipped config and alert rules. With `--devices N` it also
enrolls N devices, exports each one's own chat data as JSONL (`hetlora data export`) and starts them with
`device run --data`, so rounds run and the metrics move. The orchestrator runs the job file (`--config`, default
ops/jobs/demo.toml) with the rounds and model given here as `--set` overrides. Every process runs detached, its
log under runs/up/logs/ and its pid in runs/up/pids/; `make down` stops them all.
Standard library only: an operator's script, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"enrollment": 50051, "admin": 50052, "aggregator": 50053, "orchestrator": 50054}
METRICS = {"enrollment": 9101, "aggregator": 9102, "orchestrator": 9103}
PROMETHEUS = 9090
# (memory MB, GFLOP/s): phones to laptops, so devices land on different LoRA ranks
PROFILES = [(1504, 400), (1512, 400), (1524, 400), (2000, 400), (1508, 400), (1516, 400), (3000, 800), (1800, 500)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def hetlora(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, env=env(), timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"hetlora {' '.join(args[:3])} failed:\n{done.stderr}")
    return done.stdout


def launch(state: Path, name: str, argv: list[str], ready: str, timeout_s: float) -> None:
    """Start ``argv`` detached (own session: it outlives `make`); wait until its log says ``ready``."""
    log = state / "logs" / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
    (state / "pids" / name).write_text(str(proc.pid))
    end = time.monotonic() + timeout_s
    while ready not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {log}")
        if time.monotonic() > end:
            raise SystemExit(f"{name} not ready within {timeout_s:.0f} s; see {log}")
        time.sleep(0.2)  # polling a log file of a detached process: there is no pipe to block on


def wait_http(url: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > end:
                raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def serve(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", "serve", name, *args]


def up(args: argparse.Namespace) -> int:
    state = args.state.resolve()
    if (state / "pids").exists() and any((state / "pids").iterdir()):
        raise SystemExit(f"already up ({state / 'pids'} is not empty): run 'make down' first")
    for sub in ("logs", "pids", "prometheus/targets"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    pki = state / "pki"
    if not (pki / "ca.crt").exists():
        hetlora("ca", "init", "--dir", str(pki))
    tls = ["--pki", str(pki)]
    print("starting enrollment, aggregator and orchestrator (mTLS on 127.0.0.1)", flush=True)
    launch(state, "enrollment", serve("enrollment", *tls, "--db", str(state / "registry.db"),
           "--port", str(PORTS["enrollment"]), "--admin-port", str(PORTS["admin"]), "--r-max", str(args.r_max),
           "--metrics-port", str(METRICS["enrollment"])), "READY", 60)  # fmt: skip
    launch(state, "aggregator", serve("aggregator", *tls, "--port", str(PORTS["aggregator"]),
           "--metrics-port", str(METRICS["aggregator"])), "READY", 60)  # fmt: skip
    job = ["--config", str(args.config), "--set", f"model.path={args.model}", "--set", f"lora.r_max={args.r_max}",
           "--set", f"rounds.count={args.rounds}", "--set", f"rounds.per_round={max(2, min(args.devices, 4))}",
           "--set", "eval.clients=4"]  # fmt: skip
    launch(state, "orchestrator", serve("orchestrator", *tls, *job, "--registry", str(state / "registry.db"),
           "--store", str(state / "store"), "--aggregator", f"127.0.0.1:{PORTS['aggregator']}",
           "--port", str(PORTS["orchestrator"]), "--metrics-port", str(METRICS["orchestrator"])),
           "READY", 180)  # fmt: skip
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"component": c}} for c, port in METRICS.items()]
    prom = state / "prometheus"
    (prom / "targets" / "hetlora.json").write_text(json.dumps(targets, indent=1))
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(ROOT / "ops" / "prometheus" / name, prom / name)
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("no 'prometheus' on PATH: apt-get install prometheus (Debian), then 'make down up'")
    launch(state, "prometheus", [binary, f"--config.file={prom / 'prometheus.yml'}",
           f"--storage.tsdb.path={prom / 'data'}", f"--web.listen-address=127.0.0.1:{PROMETHEUS}"],
           "Server is ready", 60)  # fmt: skip
    wait_http(f"http://127.0.0.1:{PROMETHEUS}/-/ready", 30)
    admin = ["admin", "--pki", str(pki), "--target", f"127.0.0.1:{PORTS['admin']}"]
    data = state / "data"
    if args.devices and len(list(data.glob("*/training.jsonl"))) < args.devices:
        shutil.rmtree(data, ignore_errors=True)
        hetlora("data", "export", "chitchat", "--clients", str(args.devices), "--out", str(data))
    device_data = sorted(p.parent for p in data.glob("*/training.jsonl"))
    for i in range(args.devices):
        mem, gflops = PROFILES[i % len(PROFILES)]
        home = state / f"device-{i}"
        if not (home / "device.crt").exists():
            token = hetlora(*admin, "issue-token", f"device-{i}").strip()
            enroll_at = f"127.0.0.1:{PORTS['enrollment']}"
            hetlora("device", "enroll", "--token", token, "--target", enroll_at, "--ca", str(pki / "ca.crt"),
                    "--memory-mb", str(mem), "--gflops", str(gflops), "--dir", str(home))  # fmt: skip
        launch(state, f"device-{i}", [sys.executable, "-m", "services.cli", "device", "run", "--dir", str(home),
               "--orchestrator", f"127.0.0.1:{PORTS['orchestrator']}", "--model", args.model,
               "--data", str(device_data[i])], "READY", 120)  # fmt: skip
    print(f"\nup: {args.devices} device(s) training, {args.rounds} rounds of hetlora-rebase on {args.model}")
    print(f"  Prometheus  http://127.0.0.1:{PROMETHEUS}  (alerts: /alerts, try the query hetlora_global_version)")
    for c, port in METRICS.items():
        print(f"  {c:<12} metrics http://127.0.0.1:{port}/metrics")
    print(f"  enroll more devices: hetlora admin --pki {pki} issue-token NAME, then hetlora device enroll/run")
    print("  Grafana dashboards: ops/grafana/dashboards/*.json (provisioned by the compose and Kubernetes setups)")
    print(f"  logs: {state / 'logs'}    stop: make down")
    return 0


def down(args: argparse.Namespace) -> int:
    pids = args.state.resolve() / "pids"
    if not pids.exists():
        print("nothing is up")
        return 0
    for f in sorted(pids.iterdir()):
        pid = int(f.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)  # its session: the process and anything it started
            print(f"stopped {f.name} (pid {pid})")
        except ProcessLookupError:
            print(f"{f.name} (pid {pid}) was not running")
        f.unlink()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--down", action="store_true", help="stop everything 'up' started")
    p.add_argument("--state", type=Path, default=ROOT / "runs" / "up", help="PKI, registry, store, logs, pids")
    p.add_argument("--devices", type=int, default=0, help="also enroll and start this many devices")
    p.add_argument("--config", type=Path, default=ROOT / "ops" / "jobs" / "demo.toml", help="the job file")
    p.add_argument("--model", default="smollm2", help="the job's base model: a HF folder, a .gguf file or a name")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--r-max", type=int, default=16)
    args = p.parse_args()
    return down(args) if args.down else up(args)


if __name__ == "__main__":
    raise SystemExit(main())
