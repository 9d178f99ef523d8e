"""`make demo`: a whole deployment on this machine: CA, three services, enrolled devices, real rounds.

Runs only `hetlora` commands (the same ones an operator types), each as its own process on loopback with mTLS:
`ca init`, `serve enrollment|aggregator|orchestrator` with the job file, `admin issue-token`, `device enroll`,
`device run --data` (each device on its own files: the job's `[data] path`, else the built-in corpus exported
with `data export`), then `evaluate` for the held-out loss of every committed version. `make demo JOB=FILE`
runs your job the same way; `make demo-gemma` is a GGUF path in the file. Devices report different profiles,
so they get different LoRA ranks; rounds run with secure aggregation on. Standard library only: this file is an
operator's script, not part of the package.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

from trainer.strategies import DEFAULT_STRATEGY

JOB = Path(__file__).resolve().parent / "jobs" / "demo.toml"
# (memory MB, GFLOP/s) per device: phones to laptops, so ranks spread over [r_min, r_max].
PROFILES = [(1504, 400), (1508, 400), (1512, 400), (1516, 400), (1524, 400), (2000, 400)]


class Proc:
    """A child process whose output lines are echoed (when loud) and searchable with a bounded wait."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, loud: bool = False) -> None:
        self.name = name
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._pump, args=(loud,), daemon=True).start()

    def _pump(self, loud: bool) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if loud and any(k in line for k in ("committed version", "held-out loss", "failed")):
                print(f"  [{self.name}] {line.split(' INFO ')[-1].strip()}", flush=True)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{self.name}: no '{prefix}' within {timeout:.0f} s (log: {self.log.name})"
                ) from None
            if line is None:
                raise RuntimeError(f"{self.name} exited with {self.proc.wait()} (log: {self.log.name})")
            if line.startswith(prefix):
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def client_data(folder: Path) -> list[Path]:
    """One device's data per entry, in name order: a training.jsonl folder, or a data file."""
    if not folder.is_dir():
        raise SystemExit(f"[data] path {folder} is not a folder with one file or folder per device")
    from trainer.data.local import is_client_entry  # the rule simulations use, so both see the same devices

    return sorted(p for p in folder.iterdir() if is_client_entry(p))


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"hetlora {' '.join(args[:3])} failed:\n{done.stderr}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--config", type=Path, default=JOB, help="the job file (hetlora.toml) the deployment runs")
    p.add_argument("--model", help="override the job's [model] path")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY)
    p.add_argument("--rounds", type=int, help="override the job's rounds.count")
    p.add_argument("--per-round", type=int, help="override the job's rounds.per_round")
    p.add_argument(
        "--devices",
        type=int,
        help=f"enrolled devices (default: one per client of the job's data, at most {len(PROFILES)})",
    )
    p.add_argument("--timeout", type=float, default=540, help="give up after this many seconds")
    args = p.parse_args()
    job = tomllib.loads(args.config.read_text())
    model = args.model or job.get("model", {}).get("path", "smollm2")
    rounds, lora = job.get("rounds", {}), job.get("lora", {})
    overrides = [f"model.path={model}", f"strategy.name={args.strategy}"]
    overrides += [f"rounds.count={args.rounds}"] * (args.rounds is not None)
    overrides += [f"rounds.per_round={args.per_round}"] * (args.per_round is not None)
    n_rounds = args.rounds or rounds.get("count", 5)
    data_dir = job.get("data", {}).get("path")  # the user's per-device files; else the built-in corpus, exported
    clients = client_data(Path(data_dir)) if data_dir else []
    profiles = PROFILES[: args.devices or len(clients) or len(PROFILES)]
    started = time.monotonic()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    procs: list[Proc] = []
    try:
        print("1/5 creating the deployment CA and certificates", flush=True)
        pki = out / "pki"
        run(["ca", "init", "--dir", str(pki)], env)
        if not clients:
            corpus = job.get("simulation", {}).get("corpus", "chitchat")
            print(f"    no [data] path in {args.config}: exporting {corpus} users as the devices' JSONL", flush=True)
            run(["data", "export", corpus, "--clients", str(len(profiles)), "--out", str(out / "data")], env)
            clients = client_data(out / "data")
        if len(clients) < len(profiles):
            raise SystemExit(f"{len(profiles)} devices but data for {len(clients)} in {data_dir or out / 'data'}")
        print("2/5 starting enrollment and aggregator services (mTLS on loopback)", flush=True)
        serve_enrollment = ["serve", "enrollment", "--pki", str(pki), "--db", str(out / "registry.db"),
                            "--port", "0", "--admin-port", "0", "--r-min", str(lora.get("r_min", 2)),
                            "--r-max", str(lora.get("r_max", 32)), "--metrics-port", "0"]  # fmt: skip
        enroll = Proc("enrollment", serve_enrollment, env, out / "logs/enrollment.log")
        procs.append(enroll)
        ready = dict(kv.split("=") for kv in enroll.wait_for("READY", 60).split()[1:])
        agg = Proc(
            "aggregator",
            ["serve", "aggregator", "--pki", str(pki), "--port", "0", "--metrics-port", "0"],
            env,
            out / "logs/aggregator.log",
        )
        procs.append(agg)
        agg_ready = dict(kv.split("=") for kv in agg.wait_for("READY", 60).split()[1:])
        agg_port = agg_ready["port"]
        print(f"3/5 enrolling {len(profiles)} devices with one-time tokens", flush=True)
        admin = ["admin", "--pki", str(pki), "--target", f"127.0.0.1:{ready['admin_port']}"]
        for i, (mem, gflops) in enumerate(profiles):
            token = run([*admin, "issue-token", f"device-{i}"], env).strip()
            said = run(["device", "enroll", "--token", token, "--target", f"127.0.0.1:{ready['enroll_port']}",
                        "--ca", str(pki / "ca.crt"), "--memory-mb", str(mem), "--gflops", str(gflops),
                        "--dir", str(out / f"device-{i}")], env)  # fmt: skip
            print(f"    {said.strip()}", flush=True)
        print(f"4/5 running {n_rounds} {args.strategy} rounds on {model} with secure aggregation", flush=True)
        # The job is the file (ops/jobs/demo.toml), as a user would write it; this script's options override keys.
        serve_orchestrator = [
            "serve", "orchestrator", "--config", str(args.config), "--pki", str(pki), "--registry",
            str(out / "registry.db"), "--store", str(out / "store"), "--aggregator", f"127.0.0.1:{agg_port}",
            "--port", "0", "--metrics-port", "0", *(a for o in overrides for a in ("--set", o)),
        ]  # fmt: skip
        orch = Proc("orchestrator", serve_orchestrator, env, out / "logs/orchestrator.log", loud=True)
        procs.append(orch)
        orch_ready = dict(kv.split("=") for kv in orch.wait_for("READY", 120).split()[1:])
        orch_port = orch_ready["port"]
        metrics = {
            n: r["metrics_port"]
            for n, r in (("enrollment", ready), ("aggregator", agg_ready), ("orchestrator", orch_ready))
        }
        print(
            "    Prometheus metrics while it runs: "
            + ", ".join(f"{n} http://127.0.0.1:{p}/metrics" for n, p in metrics.items()),
            flush=True,
        )
        for i in range(len(profiles)):
            device_run = ["device", "run", "--dir", str(out / f"device-{i}"), "--orchestrator",
                          f"127.0.0.1:{orch_port}", "--model", model, "--data", str(clients[i]),
                          "--seq-len", str(rounds.get("seq_len", 64))]  # fmt: skip
            procs.append(Proc(f"device-{i}", device_run, env, out / f"logs/device-{i}.log"))
        left = args.timeout - (time.monotonic() - started)
        done = orch.wait_for("DONE", left)
        print(f"    all rounds finished: {done.strip()}", flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
    print("5/5 scoring every committed version on the devices' held-out text", flush=True)
    said = run(["evaluate", "--store", str(out / "store"), "--model", model, "--data", str(clients[0].parent),
                "--clients", str(len(profiles)), "--out", str(out)], env)  # fmt: skip
    print("    " + said.strip().replace("\n", "\n    "))
    latest = (out / "store" / "LATEST").read_text()
    print(f"\nglobal adapter (peft format): {out / 'store'} (LATEST: {latest.strip()})")
    print(f"plot: {out / 'heldout_loss.png'}   logs: {out / 'logs'}   took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
