"""One load-harness worker process: many devices as threads, each the real device agent (gRPC, mTLS, SecAgg+).

Started by ``bench/load.py``. With ``--synthetic`` (the default) a device skips training and uploads a small
random perturbation of the factors its task handed it: the same shapes, masking, stages and bytes as a
trained update, so hundreds of devices load the control plane on 2 cores. Writes per-device bytes and
rounds to ``--out`` when every round is done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc

from services.device.agent import RETRYABLE, DeviceAgent, all_rounds_finished
from services.device.secure_upload import LeftRoundError
from trainer.data.types import ClientDataset, TokenBlocks
from trainer.device import Report, Task
from trainer.factors import LoraFactors
from trainer.fingerprint import model_fingerprint
from trainer.model import load_base_model
from trainer.strategies.base import Strategy

EXAMPLES = 100  # what a synthetic device claims to hold (its aggregation weight)


def synthetic_task(strategy: Strategy, model: Any, data: ClientDataset, task: Task, *_: Any) -> Report:
    """``run_task`` without training: the task's factors plus bounded noise, uploaded as the strategy would."""
    rng = np.random.default_rng(task.seed)
    moved = {
        name: LoraFactors(
            f.B + 1e-3 * rng.standard_normal(f.B.shape).astype(np.float32),
            f.A + 1e-3 * rng.standard_normal(f.A.shape).astype(np.float32),
        )
        for name, f in task.factors.items()
    }
    contribution = strategy.contribution(task.factors, moved, data.num_train_examples)
    return Report(data.client_id, task.rank, task.rank, contribution, 0.0, data.num_train_examples)


def no_data(client_id: str) -> ClientDataset:
    empty = TokenBlocks(*(torch.zeros((0, 8), dtype=torch.long) for _ in range(3)))
    return ClientDataset(client_id, empty, empty, num_train_examples=EXAMPLES)


def run_device(agent: DeviceAgent, stop: threading.Event, log: dict[str, Any]) -> None:
    """Check in until every round is done, as ``hetlora device run`` does; bounded by the harness's stop."""
    while not stop.is_set():
        try:
            done = agent.run_round(wait_s=10.0)
        except (LeftRoundError, TimeoutError):
            log["left"] += 1
            continue
        except grpc.RpcError as e:
            if all_rounds_finished(e):
                return
            if e.code() not in RETRYABLE:
                log["errors"].append(f"{e.code().name}: {e.details()}")
                return
            stop.wait(0.5)  # back off before checking in again, as the device CLI does
            continue
        if done is not None:
            log["rounds"] += 1
            log["up_bytes"].append(done.wire.up if done.wire else 0)
            log["dropped"] += done.wire is None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", type=Path, required=True, help="JSON: ca, orchestrator, devices [{name, rank}]")
    p.add_argument("--model", default="tiny", help="whose layer shapes the updates have")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    manifest = json.loads(args.manifest.read_text())
    model = load_base_model(args.model)  # shared: synthetic devices only read its layer shapes
    fingerprint = model_fingerprint(args.model, model)
    ca = Path(manifest["ca"]).read_bytes()
    stop = threading.Event()
    logs: dict[str, dict[str, Any]] = {}
    threads = []
    for device in manifest["devices"]:
        name = device["name"]
        cert, key = Path(device["cert"]).read_bytes(), Path(device["key"]).read_bytes()
        target = manifest["orchestrator"]
        agent = DeviceAgent.connect(target, ca, cert, key, model, no_data(name), fingerprint=fingerprint)
        agent.run_task = synthetic_task  # type: ignore[assignment]
        logs[name] = {"rank": device["rank"], "rounds": 0, "up_bytes": [], "dropped": 0, "left": 0, "errors": []}
        threads.append(threading.Thread(target=run_device, args=(agent, stop, logs[name]), daemon=True))
    print(f"READY devices={len(threads)}", flush=True)
    for t in threads:
        t.start()
    end = time.monotonic() + manifest.get("timeout_s", 900)
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()))
    stop.set()
    args.out.write_text(json.dumps(logs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
