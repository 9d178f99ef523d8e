"""Secure aggregation over real gRPC with mTLS: devices mask, the aggregator only ever unmasks bucket sums."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from secure_agg import (
    BucketLayout,
    BucketStatus,
    Ed25519Directory,
    Ed25519Signer,
    FixedPointCodec,
    RoundConfig,
    SecAggClient,
    SecAggRequirements,
    Stage,
)
from services.aggregator.client import open_round, round_sums
from services.aggregator.server import RunningAggregator
from services.aggregator.servicer import STAGE_TO_WIRE
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.api.hetlora.v1 import aggregator_pb2_grpc as rpc
from services.device.secure_upload import LeftRoundError, secure_upload
from services.pki import CertificateAuthority
from services.transport import TlsFiles, channel

pytestmark = pytest.mark.timeout(120)
EDGES = (0, 2, 4, 8)
LAYOUT = BucketLayout.for_rank_edges(EDGES, component_size=6)
CODEC = FixedPointCodec(value_bound=4.0, weight_bound=1.0, max_clients=16)
RANKS = (2, 8, 4, 8, 2, 4)


def stub_for(pki: Path, port: int, name: str, role: str) -> rpc.AggregatorServiceStub:
    if role == "service":
        tls = TlsFiles.load(pki, "service")
        cert, key = tls.cert_pem, tls.key_pem
    else:
        cert, key = CertificateAuthority.load(pki).issue(name, role)
    return rpc.AggregatorServiceStub(channel(f"127.0.0.1:{port}", (pki / "ca.crt").read_bytes(), cert, key))


def run_round(pki: Path, aggregator: RunningAggregator, round_id: int, stop_before: dict[int, Stage], timeout_s: float):
    rng = np.random.default_rng(round_id)
    values = {c: rng.uniform(-1, 1, LAYOUT.dim).astype(np.float32) for c in range(len(RANKS))}
    weights = {c: float(rng.uniform(0.2, 1.0)) for c in values}
    levels = {c: EDGES.index(r) for c, r in enumerate(RANKS)}
    config = RoundConfig.create(round_id, list(values), LAYOUT, levels, SecAggRequirements(0.05, 0.34))
    signers = {c: Ed25519Signer.generate() for c in values}
    orchestrator = stub_for(pki, aggregator.port, "service", "service")
    open_round(orchestrator, config, {c: (f"dev-{c}", s.public_bytes) for c, s in signers.items()}, timeout_s)
    outcome: dict[int, object] = {}

    def device(c: int) -> None:
        stub = stub_for(pki, aggregator.port, f"dev-{c}", "device")
        try:
            outcome[c] = secure_upload(stub, round_id, signers[c], values[c], weights[c], CODEC, 60, stop_before.get(c))
        except LeftRoundError as e:
            outcome[c] = e

    threads = [threading.Thread(target=device, args=(c,)) for c in values]
    for t in threads:
        t.start()
    sums, survivors = round_sums(orchestrator, config, CODEC, deadline_s=60)
    for t in threads:
        t.join(timeout=60)
    return values, weights, levels, sums, survivors, outcome


def expected_sum(values, weights, levels, clients, j):
    inside = [c for c in clients if levels[c] > j]
    sl = LAYOUT.input_slice(j)
    return sum(weights[c] * np.clip(values[c][sl], -4, 4) for c in inside), sum(weights[c] for c in inside)


def assert_unmasked_sums_match(values, weights, levels, sums, survivors) -> None:
    """Every bucket that was unmasked holds exactly the survivors' weighted sum (within quantisation)."""
    for j, bucket in enumerate(sums):
        if bucket.weighted_sum is None:
            continue
        want, want_w = expected_sum(values, weights, levels, survivors, j)
        np.testing.assert_allclose(bucket.weighted_sum, want, atol=1e-3)
        assert bucket.weight_sum == pytest.approx(want_w, abs=1e-3)


def test_round_over_grpc_returns_each_bucket_sum_over_the_devices_that_trained_it(pki: Path, aggregator) -> None:
    values, weights, levels, sums, survivors, outcome = run_round(pki, aggregator, 1, {}, timeout_s=30)
    assert survivors == tuple(range(len(RANKS)))
    assert all(v.up > LAYOUT.total * 4 and v.down > 0 for v in outcome.values()), outcome  # type: ignore[attr-defined]
    for j, bucket in enumerate(sums):
        want, want_w = expected_sum(values, weights, levels, survivors, j)
        assert bucket.outcome.status == BucketStatus.UNMASKED
        np.testing.assert_allclose(bucket.weighted_sum, want, atol=1e-3)
        assert bucket.weight_sum == pytest.approx(want_w, abs=1e-3)


def test_devices_that_vanish_mid_round_are_left_out_and_the_round_still_completes(pki: Path, aggregator) -> None:
    drop = {1: Stage.MASKED_INPUT, 4: Stage.UNMASK}  # one never uploads, one uploads but never unmasks
    values, weights, levels, sums, survivors, outcome = run_round(pki, aggregator, 2, drop, timeout_s=2)
    assert 1 not in survivors and 4 in survivors
    assert isinstance(outcome[1], LeftRoundError) and isinstance(outcome[4], LeftRoundError)
    assert_unmasked_sums_match(values, weights, levels, sums, survivors)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_roles_membership_and_replays_are_enforced(pki: Path, aggregator) -> None:
    config = RoundConfig.create(9, [0, 1, 2], LAYOUT, None, SecAggRequirements(0.05, 0.1))
    signers = {c: Ed25519Signer.generate() for c in range(3)}
    members = {c: (f"m-{c}", s.public_bytes) for c, s in signers.items()}
    device = stub_for(pki, aggregator.port, "m-0", "device")
    assert code_of(lambda: open_round(device, config, members, 5)) == grpc.StatusCode.PERMISSION_DENIED
    orchestrator = stub_for(pki, aggregator.port, "service", "service")
    open_round(orchestrator, config, members, 5)
    assert code_of(lambda: open_round(orchestrator, config, members, 5)) == grpc.StatusCode.ALREADY_EXISTS
    stranger = stub_for(pki, aggregator.port, "stranger", "device")
    ask = pb.AwaitStageRequest(round_id=9, stage=STAGE_TO_WIRE[Stage.ADVERTISE_KEYS], wait_ms=100)
    assert code_of(lambda: stranger.AwaitStage(ask, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    start = device.AwaitStage(ask, timeout=10)
    assert start.client_id == 0 and len(start.signing_keys) == 3
    # m-0 submits an advertisement signed and labelled as client 1: refused, it is not who the certificate says.
    verifier = Ed25519Directory({c: s.public_bytes for c, s in signers.items()})
    impostor = SecAggClient.start(1, config, signers[1], verifier).advertise_keys().to_bytes()
    wire = STAGE_TO_WIRE[Stage.ADVERTISE_KEYS]

    def upload(payload: bytes) -> pb.SubmitStageResponse:
        chunks = iter([pb.SubmitStageRequest(round_id=9, stage=wire, chunk=payload)])
        return device.SubmitStage(chunks, timeout=10)

    assert code_of(lambda: upload(impostor)) == grpc.StatusCode.PERMISSION_DENIED
    honest = SecAggClient.start(0, config, signers[0], verifier).advertise_keys().to_bytes()
    upload(honest)
    assert code_of(lambda: upload(honest)) == grpc.StatusCode.ALREADY_EXISTS  # replay
    assert code_of(lambda: upload(b"\x00garbage")) in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT)
    later = pb.AwaitStageRequest(round_id=9, stage=STAGE_TO_WIRE[Stage.SHARE_KEYS], wait_ms=50)
    assert code_of(lambda: device.AwaitStage(later, timeout=10)) == grpc.StatusCode.DEADLINE_EXCEEDED  # not open yet
    result = pb.GetRoundResultRequest(round_id=9, wait_ms=10)
    assert code_of(lambda: device.GetRoundResult(result, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    missing = pb.GetRoundResultRequest(round_id=404, wait_ms=10)
    assert code_of(lambda: orchestrator.GetRoundResult(missing, timeout=10)) == grpc.StatusCode.NOT_FOUND


def test_aggregator_process_serves_a_round_to_device_threads(pki: Path) -> None:
    """The real `hetlora serve aggregator` process, mTLS on an ephemeral port."""
    from tests.services.processes import start_service

    proc = start_service(["serve", "aggregator", "--pki", str(pki), "--port", "0"])
    try:
        running = RunningAggregator(server=None, port=int(proc.ready["port"]), handler=None)  # type: ignore[arg-type]
        values, weights, levels, sums, survivors, _ = run_round(pki, running, 31, {}, timeout_s=30)
        want, _ = expected_sum(values, weights, levels, survivors, 0)
        np.testing.assert_allclose(sums[0].weighted_sum, want, atol=1e-3)
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK]
)
def test_a_device_killed_at_any_stage_leaves_a_correct_sum_over_the_others(pki: Path, aggregator, stage: Stage) -> None:
    round_id = 100 + list(Stage).index(stage)
    values, weights, levels, sums, survivors, outcome = run_round(pki, aggregator, round_id, {2: stage}, timeout_s=2)
    assert isinstance(outcome[2], LeftRoundError)
    # A device that vanished before its masked input is not in the sum; after it, its input stays in.
    assert (2 in survivors) == (stage in (Stage.CONSISTENCY_CHECK, Stage.UNMASK))
    assert_unmasked_sums_match(values, weights, levels, sums, survivors)


def test_aggregator_process_serves_prometheus_metrics(pki: Path) -> None:
    import urllib.request

    from tests.services.processes import start_service

    proc = start_service(["serve", "aggregator", "--pki", str(pki), "--port", "0", "--metrics-port", "0"])
    try:
        running = RunningAggregator(server=None, port=int(proc.ready["port"]), handler=None)  # type: ignore[arg-type]
        run_round(pki, running, 41, {}, timeout_s=30)
        url = f"http://127.0.0.1:{proc.ready['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    finally:
        proc.stop()
    assert 'hetlora_grpc_requests_total{code="OK",method="SubmitStage",service="aggregator"} 30.0' in text
    assert 'hetlora_secagg_stages_total{stage="unmask"} 1.0' in text
    assert "hetlora_secagg_bucket_cohort_devices_count 3.0" in text  # one observation per rank bucket
