"""Secure aggregation over the services versus in-process: wall time and bytes per device per round.

The same SecAgg+ round (10 devices, ranks uniform in [2, 32], the tiny model's LoRA layout bucketed by the
cohort's ranks) runs twice: in-process with ``secure_agg.simulate_round`` (one thread, no transport), and
over gRPC with mTLS against a real aggregator server on loopback, each device a thread with its own channel.
Reports the median of ``--repeats`` rounds, the overhead ratio, and the protocol bytes each device sent and
received (what the wire carries, less gRPC/HTTP2/TLS framing).

    python bench/services_bench.py --json bench/results/services.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secure_agg import ClientInput, Ed25519Signer, FixedPointCodec, RoundConfig, SecAggRequirements, simulate_round
from services.aggregator.client import open_round, round_sums
from services.aggregator.server import start
from services.api.hetlora.v1 import aggregator_pb2_grpc as rpc
from services.device.secure_upload import WireBytes, secure_upload
from services.pki import CertificateAuthority, init_pki
from services.secure_sum import bucket_edges, factor_layout
from services.transport import TlsFiles, channel
from trainer.model import load_base_model
from trainer.peft_bridge import adapted_modules


def _round_setup(devices: int, seed: int) -> tuple[RoundConfig, dict[int, ClientInput], FixedPointCodec]:
    shapes = adapted_modules(load_base_model("tiny"))
    rng = np.random.default_rng(seed)
    ranks = [int(r) for r in rng.integers(2, 33, devices)]
    edges = bucket_edges(ranks)
    layout = factor_layout(shapes, edges)
    levels = {c: edges.index(r) for c, r in enumerate(ranks)}
    config = RoundConfig.create(seed, list(range(devices)), layout, levels, SecAggRequirements(0.05, 0.1))
    inputs = {c: ClientInput(rng.uniform(-1, 1, layout.dim).astype(np.float32), 1.0) for c in range(devices)}
    return config, inputs, FixedPointCodec(value_bound=4.0, weight_bound=1.0, max_clients=devices)


def in_process(config: RoundConfig, inputs: dict[int, ClientInput], codec: FixedPointCodec) -> float:
    t0 = time.perf_counter()
    report = simulate_round(config, inputs, codec, rng=np.random.default_rng(0), timer=time.perf_counter)
    assert report.completed, report.abort_reason
    return time.perf_counter() - t0


def over_grpc(
    pki: Path, port: int, config: RoundConfig, inputs: dict[int, ClientInput], codec: FixedPointCodec
) -> tuple[float, dict[int, WireBytes]]:
    ca = CertificateAuthority.load(pki)
    ca_pem = (pki / "ca.crt").read_bytes()
    tls = TlsFiles.load(pki, "service")
    orchestrator = rpc.AggregatorServiceStub(channel(f"127.0.0.1:{port}", ca_pem, tls.cert_pem, tls.key_pem))
    stubs = {}
    for c in inputs:  # channels and certificates are set up once per device, outside the timed round
        cert, key = ca.issue(f"bench-{c}", "device")
        stubs[c] = rpc.AggregatorServiceStub(channel(f"127.0.0.1:{port}", ca_pem, cert, key))
    signers = {c: Ed25519Signer.generate() for c in inputs}
    wire: dict[int, WireBytes] = {}

    def device(c: int) -> None:
        wire[c] = secure_upload(stubs[c], config.round_id, signers[c], inputs[c].values, 1.0, codec, 120)

    t0 = time.perf_counter()
    open_round(orchestrator, config, {c: (f"bench-{c}", s.public_bytes) for c, s in signers.items()}, 60)
    threads = [threading.Thread(target=device, args=(c,)) for c in inputs]
    for t in threads:
        t.start()
    round_sums(orchestrator, config, codec, deadline_s=120)
    for t in threads:
        t.join(timeout=120)
    return time.perf_counter() - t0, wire


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=Path("bench/results/services.json"))
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    local, remote, wires = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        init_pki(pki)
        server = start(pki, "127.0.0.1", 0)
        try:
            for rep in range(args.repeats):
                config, inputs, codec = _round_setup(args.devices, seed=1000 + rep)
                local.append(in_process(config, inputs, codec))
                wall, wire = over_grpc(pki, server.port, config, inputs, codec)
                remote.append(wall)
                wires.append(wire)
        finally:
            server.stop(None)
    up = [w.up for wire in wires for w in wire.values()]
    down = [w.down for wire in wires for w in wire.values()]
    result = {
        "benchmark": "services-secagg",
        "devices": args.devices,
        "repeats": args.repeats,
        "masked_vector_bytes": int(config.layout.total * 4),
        "in_process_s": statistics.median(local),
        "grpc_s": statistics.median(remote),
        "overhead_ratio": statistics.median(remote) / statistics.median(local),
        "up_bytes_per_device": statistics.median(up),
        "down_bytes_per_device": statistics.median(down),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
