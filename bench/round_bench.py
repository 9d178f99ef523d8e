"""A whole round through the services versus the same round in-process (tiny model, 10 devices).

In-process: the round engine with every device's training called in turn and sums in the clear (what
``hetlora simulate`` does). Services: enrollment records, aggregator and orchestrator on loopback with mTLS,
ten device agents as threads, each with its own tiny model; the round is timed by the orchestrator from
planning to commit. Training dominates both; devices train concurrently in the services (threads on this
machine's cores), one after another in-process, so the report also gives the in-process time divided by the
number of devices that can train at once. Writes JSON; see docs/services.md for the numbers.

    python bench/round_bench.py --json bench/results/round.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc

from services.aggregator.server import start as start_aggregator
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.device.agent import DeviceAgent
from services.orchestrator.coordinator import RoundSettings
from services.orchestrator.server import OrchestratorConfig
from services.orchestrator.server import start as start_orchestrator
from services.pki import CertificateAuthority, identity_of, init_pki
from services.registry import DeviceRegistry
from services.settings import strategy_settings
from trainer.data.registry import load_federated_corpus
from trainer.device import run_task
from trainer.fingerprint import model_fingerprint
from trainer.local_train import TrainConfig
from trainer.model import load_base_model, load_tokenizer
from trainer.peft_bridge import adapted_modules
from trainer.ranks import DeviceProfile
from trainer.round_engine import RoundEngine, derive_seed
from trainer.scaling import Scaling
from trainer.store import MemoryStore
from trainer.strategies import StrategyConfig, make_strategy

STRATEGY, R_MAX, STEPS, BATCH, SEQ = "hetlora-rebase", 16, 2, 4, 64


def in_process(clients, ranks) -> float:
    model = load_base_model("tiny")
    strategy = make_strategy(STRATEGY, StrategyConfig(2, R_MAX, Scaling()))
    engine = RoundEngine(
        strategy, MemoryStore(strategy.initial(adapted_modules(model), derive_seed(0, "init"))), ranks, len(ranks), 0
    )
    data = {c.client_id: c for c in clients}
    t0 = time.perf_counter()
    plan = engine.plan(1)
    reports = [
        run_task(strategy, model, data[c], t, TrainConfig(STEPS, BATCH, 1e-3)) for c, t in engine.tasks(plan).items()
    ]
    engine.finish(plan, reports, [])
    return time.perf_counter() - t0


def over_services(clients, ranks, tmp: Path) -> float:
    pki = tmp / "pki"
    init_pki(pki)
    ca, registry = CertificateAuthority.load(pki), DeviceRegistry(tmp / "registry.db")
    creds = {}
    for name, rank in ranks.items():
        cert, key = ca.issue(name, "device")
        token, _ = registry.issue_token(name, 60, 0)
        registry.complete_enrollment(token, name, identity_of(cert).serial, DeviceProfile(2000, 100), rank, 1)
        creds[name] = (cert, key)
    registry.close()
    aggregator = start_aggregator(pki, "127.0.0.1", 0)
    settings = strategy_settings(STRATEGY, 2, R_MAX)
    cfg = OrchestratorConfig(
        settings, pb.TrainSettings(steps=STEPS, batch_size=BATCH, lr=1e-3),
        RoundSettings(rounds=1, per_round=len(ranks), overselect=1.0, min_devices=len(ranks)),
        f"127.0.0.1:{aggregator.port}",
    )  # fmt: skip
    shapes = adapted_modules(load_base_model("tiny"))
    orchestrator = start_orchestrator(pki, tmp / "registry.db", tmp / "store", shapes, cfg, "127.0.0.1", 0)
    ca_pem = (pki / "ca.crt").read_bytes()
    models = {n: load_base_model("tiny") for n in ranks}  # before the threads: init draws from the global RNG

    def device(name: str, data) -> None:
        cert, key = creds[name]
        fingerprint = model_fingerprint("tiny", models[name])
        agent = DeviceAgent.connect(
            f"127.0.0.1:{orchestrator.port}", ca_pem, cert, key, models[name], data, fingerprint=fingerprint
        )
        try:
            while agent.run_round(wait_s=2.0) is None:
                pass
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=device, args=(c.client_id, c)) for c in clients]
    for t in threads:
        t.start()
    assert orchestrator.coordinator.join(timeout_s=300), "round did not finish"
    for t in threads:
        t.join(timeout=60)
    record = orchestrator.coordinator.history[-1]
    orchestrator.stop(None)
    aggregator.stop(None)
    assert record.state == "committed", record
    return record.wall_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=Path("bench/results/round.json"))
    p.add_argument("--devices", type=int, default=10)
    args = p.parse_args(argv)
    names = [f"dev-{i}" for i in range(args.devices)]
    raw = load_federated_corpus("chitchat", load_tokenizer(), args.devices, SEQ, heldout_blocks=1)
    clients = [dataclasses.replace(c, client_id=n) for c, n in zip(raw, names, strict=True)]
    ranks = {n: 2 + (i * (R_MAX - 2)) // max(1, args.devices - 1) for i, n in enumerate(names)}
    local = in_process(clients, ranks)
    with tempfile.TemporaryDirectory() as tmp:
        served = over_services(clients, ranks, Path(tmp))
    cores = os.cpu_count() or 1
    result = {
        "benchmark": "services-round",
        "devices": args.devices,
        "strategy": STRATEGY,
        "train": {"steps": STEPS, "batch_size": BATCH, "seq_len": SEQ, "model": "tiny"},
        "in_process_s": local,
        "services_s": served,
        "ratio": served / local,
        "ratio_vs_in_process_parallel": served / (local / min(cores, args.devices)),
        "machine": {"platform": platform.platform(), "cpus": cores},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
