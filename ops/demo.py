"""`make demo`: a whole deployment on this machine: CA, three services, six enrolled devices, real rounds.

Runs only `hetlora` commands (the same ones an operator types), each as its own process on loopback with
mTLS: `ca init`, `serve enrollment|aggregator|orchestrator`, `admin issue-token`, `device enroll|run`, then
`evaluate` for the held-out loss of every committed version. Devices report different profiles, so they get
different LoRA ranks; HetLoRA rounds run with secure aggregation on. Standard library only: this file is an
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
    p.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=4)
    p.add_argument("--timeout", type=float, default=540, help="give up after this many seconds")
    args = p.parse_args()
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
        print("2/5 starting enrollment and aggregator services (mTLS on loopback)", flush=True)
        serve_enrollment = ["serve", "enrollment", "--pki", str(pki), "--db", str(out / "registry.db"),
                            "--port", "0", "--admin-port", "0", "--r-max", "16", "--metrics-port", "0"]  # fmt: skip
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
        print(f"3/5 enrolling {len(PROFILES)} devices with one-time tokens", flush=True)
        admin = ["admin", "--pki", str(pki), "--target", f"127.0.0.1:{ready['admin_port']}"]
        for i, (mem, gflops) in enumerate(PROFILES):
            token = run([*admin, "issue-token", f"device-{i}"], env).strip()
            said = run(["device", "enroll", "--token", token, "--target", f"127.0.0.1:{ready['enroll_port']}",
                        "--ca", str(pki / "ca.crt"), "--memory-mb", str(mem), "--gflops", str(gflops),
                        "--dir", str(out / f"device-{i}")], env)  # fmt: skip
            print(f"    {said.strip()}", flush=True)
        print(f"4/5 running {args.rounds} {args.strategy} rounds on {args.model} with secure aggregation", flush=True)
        # The job is ops/jobs/demo.toml, as a user would write it; this script's options override its keys.
        serve_orchestrator = [
            "serve", "orchestrator", "--config", str(JOB), "--pki", str(pki), "--registry", str(out / "registry.db"),
            "--store", str(out / "store"), "--aggregator", f"127.0.0.1:{agg_port}", "--port", "0",
            "--metrics-port", "0", "--set", f"model.path={args.model}", "--set", f"strategy.name={args.strategy}",
            "--set", f"rounds.count={args.rounds}", "--set", f"rounds.per_round={args.per_round}",
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
        for i in range(len(PROFILES)):
            device_run = ["device", "run", "--dir", str(out / f"device-{i}"), "--orchestrator",
                          f"127.0.0.1:{orch_port}", "--model", args.model, "--client-index", str(i)]  # fmt: skip
            procs.append(Proc(f"device-{i}", device_run, env, out / f"logs/device-{i}.log"))
        left = args.timeout - (time.monotonic() - started)
        done = orch.wait_for("DONE", left)
        print(f"    all rounds finished: {done.strip()}", flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
    print("5/5 scoring every committed version on the devices' held-out text", flush=True)
    said = run(["evaluate", "--store", str(out / "store"), "--model", args.model, "--clients", str(len(PROFILES)),
                "--out", str(out)], env)  # fmt: skip
    print("    " + said.strip().replace("\n", "\n    "))
    latest = (out / "store" / "LATEST").read_text()
    print(f"\nglobal adapter (peft format): {out / 'store'} (LATEST: {latest.strip()})")
    print(f"plot: {out / 'heldout_loss.png'}   logs: {out / 'logs'}   took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
