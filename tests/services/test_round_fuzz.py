"""Bounded fuzz loops against the aggregator and orchestrator: precise statuses, no state change."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.aggregator.server import start as start_aggregator
from services.api.hetlora.v1 import aggregator_pb2 as apb
from services.api.hetlora.v1 import aggregator_pb2_grpc as agg_rpc
from services.api.hetlora.v1 import orchestrator_pb2 as opb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as orch_rpc
from services.orchestrator.coordinator import RoundSettings
from services.orchestrator.server import OrchestratorConfig
from services.orchestrator.server import start as start_orchestrator
from services.pki import CertificateAuthority
from services.settings import strategy_settings
from services.transport import TlsFiles, channel
from tests.services.test_round_services import enroll_all
from trainer.peft_bridge import adapted_modules

pytestmark = pytest.mark.timeout(180)
WAIT = 10.0
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 8, 32, 200)))


@pytest.fixture
def services(pki: Path, tmp_path: Path, tiny_model_factory) -> Iterator[tuple]:
    db = tmp_path / "registry.db"
    creds = enroll_all(pki, db, {"fz-a": 4, "fz-b": 8})
    aggregator = start_aggregator(pki, "127.0.0.1", 0)
    cfg = OrchestratorConfig(
        strategy=strategy_settings("hetlora-rebase", 2, 8),
        train=opb.TrainSettings(steps=1, batch_size=1, lr=1e-3),
        rounds=RoundSettings(rounds=1, per_round=2, min_devices=2, checkin_window_s=1.0),
        aggregator_target=f"127.0.0.1:{aggregator.port}",
    )
    shapes = adapted_modules(tiny_model_factory(0))
    orchestrator = start_orchestrator(pki, db, tmp_path / "store", shapes, cfg, "127.0.0.1", 0)
    yield aggregator, orchestrator, creds
    orchestrator.stop(None)
    aggregator.stop(None)


def test_a_thousand_malformed_round_calls_get_precise_statuses(pki: Path, services) -> None:
    aggregator, orchestrator, creds = services
    rng = random.Random(99)
    ca_pem = (pki / "ca.crt").read_bytes()
    stranger_cert, stranger_key = CertificateAuthority.load(pki).issue("not-enrolled", "device")
    identities = [creds["fz-a"], (stranger_cert, stranger_key)]
    service = TlsFiles.load(pki, "service")
    identities.append((service.cert_pem, service.key_pem))
    agg = [agg_rpc.AggregatorServiceStub(channel(f"127.0.0.1:{aggregator.port}", ca_pem, c, k)) for c, k in identities]
    orch_channels = [channel(f"127.0.0.1:{orchestrator.port}", ca_pem, c, k) for c, k in identities]
    orch = [orch_rpc.OrchestratorServiceStub(ch) for ch in orch_channels]
    raw = [ch.unary_unary("/hetlora.v1.OrchestratorService/ReportTraining") for ch in orch_channels]
    seen: dict[str, int] = {}
    for i in range(1000):
        who = rng.randrange(len(identities))
        kind = i % 5
        try:
            if kind == 0:
                request = apb.OpenRoundRequest(
                    round_id=rng.randrange(2**63), round_config=_bytes(rng), stage_timeout_ms=rng.randrange(10**7)
                )
                agg[who].OpenRound(request, timeout=WAIT)
            elif kind == 1:
                stage = rng.randrange(-2, 8)
                agg[who].AwaitStage(
                    apb.AwaitStageRequest(round_id=rng.randrange(2**63), stage=stage, wait_ms=10), timeout=WAIT
                )  # type: ignore[arg-type]
            elif kind == 2:
                chunk = apb.SubmitStageRequest(
                    round_id=rng.randrange(2**63), stage=rng.randrange(0, 6), chunk=_bytes(rng)
                )  # type: ignore[arg-type]
                agg[who].SubmitStage(iter([chunk] * rng.randrange(0, 3)), timeout=WAIT)
            elif kind == 3:
                report = opb.ReportTrainingRequest(
                    round_id=rng.randrange(2**63),
                    rank_before=rng.randrange(40),
                    rank_after=rng.randrange(40),
                    train_loss=rng.choice((float("nan"), -1.0, 3.0)),
                )
                orch[who].ReportTraining(report, timeout=WAIT)
            else:
                raw[who](_bytes(rng) or b"\xff", timeout=WAIT)
            outcome = "OK"
        except grpc.RpcError as e:
            assert e.code() in ALLOWED, (kind, e.code(), e.details())
            outcome = e.code().name
        seen[f"{kind}:{outcome}"] = seen.get(f"{kind}:{outcome}", 0) + 1
    assert not any(key.endswith(":OK") for key in seen), seen  # garbage never opens a round or files a report
    assert list(orchestrator.coordinator.history) == []  # no round was started by any of it
    assert {"0:PERMISSION_DENIED", "0:INVALID_ARGUMENT", "1:NOT_FOUND", "3:FAILED_PRECONDITION"} <= set(seen), seen
