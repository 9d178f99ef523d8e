"""Bounded fuzz loops against the aggregator and orchestrator: precise statuses, no state change.

The first loop sends random fields and bytes; the second starts from a valid request for every method of both
services and mutates it (tests/services/mutations.py has the mutations).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from secure_agg import Ed25519Directory, Ed25519Signer, RoundConfig, SecAggClient, SecAggRequirements
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
from services.transport import MAX_MESSAGE_BYTES, TlsFiles, channel
from tests.services.mutations import PRECISE, Target, assert_reached_handlers, fuzz, no_tracebacks
from tests.services.test_aggregator_service import LAYOUT
from tests.services.test_round_services import enroll_all
from trainer.peft_bridge import adapted_modules

pytestmark = pytest.mark.timeout(180)
WAIT = 10.0
UPLOAD_CAP = 1 << 20  # small, so a mutated upload of many large chunks reaches the cap cheaply
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
    aggregator = start_aggregator(pki, "127.0.0.1", 0, max_upload_bytes=UPLOAD_CAP)
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


def test_a_thousand_malformed_round_calls_get_precise_statuses(
    pki: Path, services, caplog: pytest.LogCaptureFixture
) -> None:
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
    no_tracebacks(caplog)


ROUND, OTHER_ROUND = 5, 1000  # stage calls fuzz ROUND; ExcludeMembers may legitimately put clients out of OTHER
MEMBERS = ("fz-a", "ghost-1", "ghost-2")  # fz-a is client 0 of both rounds; the ghosts never call
BIG = (0, 1, 2**63, 2**64 - 1)
STAGES = (0, apb.STAGE_SHARE_KEYS, apb.STAGE_MASKED_INPUT, apb.STAGE_UNMASK, 6, -1)


def open_rounds(stub: agg_rpc.AggregatorServiceStub) -> tuple[apb.OpenRoundRequest, bytes, bytes]:
    """ROUND and OTHER_ROUND, stage deadlines far off; returns ROUND's request, fz-a's real advertisement for
    ROUND and one signed with a key the round does not know (refused, whatever a mutation does to it)."""
    signers = [Ed25519Signer.generate() for _ in MEMBERS]
    verifier = Ed25519Directory({c: s.public_bytes for c, s in enumerate(signers)})
    requests = {}
    for round_id in (ROUND, OTHER_ROUND):
        config = RoundConfig.create(round_id, [0, 1, 2], LAYOUT, None, SecAggRequirements(0.05, 0.1))
        members = [
            apb.CohortMember(device_id=d, client_id=c, signing_public_key=signers[c].public_bytes)
            for c, d in enumerate(MEMBERS)
        ]
        requests[round_id] = apb.OpenRoundRequest(
            round_id=round_id, round_config=config.to_bytes(), members=members, stage_timeout_ms=600_000
        )
        stub.OpenRound(requests[round_id], timeout=WAIT)
    config = RoundConfig.from_bytes(requests[ROUND].round_config)
    real = SecAggClient.start(0, config, signers[0], verifier).advertise_keys().to_bytes()
    forged = SecAggClient.start(0, config, Ed25519Signer.generate(), verifier).advertise_keys().to_bytes()
    return requests[ROUND], real, forged


def round_targets(pki: Path, aggregator, orchestrator, creds) -> tuple[list[Target], bytes]:
    """A valid request for every method of both services, each from the caller that gets furthest in."""
    ca_pem = (pki / "ca.crt").read_bytes()
    service = TlsFiles.load(pki, "service")

    def to(port: int, cert: bytes, key: bytes) -> grpc.Channel:
        return channel(f"127.0.0.1:{port}", ca_pem, cert, key, max_message_bytes=8 * MAX_MESSAGE_BYTES)

    agg_service, agg_device = (
        to(aggregator.port, service.cert_pem, service.key_pem),
        to(aggregator.port, *creds["fz-a"]),
    )
    orch_service, orch_device = (
        to(orchestrator.port, service.cert_pem, service.key_pem),
        to(orchestrator.port, *creds["fz-a"]),
    )
    opened, real, forged = open_rounds(agg_rpc.AggregatorServiceStub(agg_service))
    half = len(forged) // 2
    chunks = tuple(
        apb.SubmitStageRequest(round_id=ROUND, stage=apb.STAGE_ADVERTISE_KEYS, chunk=c)
        for c in (forged[:half], forged[half:])
    )
    rounds = {"round_id": (OTHER_ROUND, ROUND + 1, *BIG)}
    agg, orch = "/hetlora.v1.AggregatorService/", "/hetlora.v1.OrchestratorService/"
    targets = [
        Target(
            agg + "OpenRound",
            "unary",
            (opened,),
            agg_service,
            PRECISE,
            {**rounds, "client_id": (3, 2**32 - 1), "stage_timeout_ms": (0, 2**32 - 1)},
        ),
        Target(
            agg + "GetRoundResult",
            "unary",
            (apb.GetRoundResultRequest(round_id=ROUND),),
            agg_service,
            PRECISE,
            rounds,
            timeout=0.3,
        ),
        Target(
            agg + "AwaitStage",
            "unary",
            (apb.AwaitStageRequest(round_id=ROUND, stage=apb.STAGE_ADVERTISE_KEYS),),
            agg_device,
            PRECISE,
            {**rounds, "stage": STAGES},
            ok=True,
            timeout=0.3,
        ),
        Target(agg + "SubmitStage", "client_stream", chunks, agg_device, PRECISE, {**rounds, "stage": STAGES}),
        Target(
            agg + "ExcludeMembers",
            "unary",
            (apb.ExcludeMembersRequest(round_id=OTHER_ROUND, client_ids=[99], reason="fuzz"),),
            agg_service,
            PRECISE,
            {"round_id": (OTHER_ROUND + 1, *BIG), "client_ids": (0, 1, 3, 2**32 - 1)},
            ok=True,
        ),
        Target(
            orch + "GetTask",
            "server_stream",
            (opb.GetTaskRequest(wait_ms=0, signing_public_key=b"k" * 32),),
            orch_device,
            PRECISE,
            timeout=0.3,
        ),
        Target(
            orch + "ReportTraining",
            "unary",
            (
                opb.ReportTrainingRequest(
                    round_id=1,
                    rank_before=4,
                    rank_after=4,
                    train_loss=1.0,
                    num_examples=10,
                    upload_floats=100,
                    example_privacy=opb.ExamplePrivacySpent(epsilon=1.0, delta=1e-5, accountant="rdp", steps=2),
                ),
            ),
            orch_device,
            PRECISE,
            {"round_id": (0, 2, *BIG)},
        ),
        Target(
            orch + "ReportUnavailable",
            "unary",
            (opb.ReportUnavailableRequest(reason=opb.UNAVAILABLE_REASON_BAD_DATA, detail="fuzz"),),
            orch_device,
            PRECISE,
            ok=True,
        ),
        Target(orch + "GetStatus", "unary", (opb.GetStatusRequest(),), orch_service, PRECISE, ok=True),
    ]
    return targets, real


def test_mutated_valid_requests_to_every_round_method_get_precise_statuses_and_change_nothing(
    pki: Path, services, caplog: pytest.LogCaptureFixture
) -> None:
    aggregator, orchestrator, creds = services
    targets, real_advert = round_targets(pki, aggregator, orchestrator, creds)
    status = opb.GetStatusRequest().SerializeToString()
    status_path = "/hetlora.v1.OrchestratorService/GetStatus"
    status_before = targets[-1].channel.unary_unary(status_path)(status, timeout=WAIT)
    devices_before = orchestrator.registry.devices()

    seen = fuzz(targets, random.Random(2024), calls=60 * len(targets))

    assert_reached_handlers(seen, targets)
    assert any(":oversized:RESOURCE_EXHAUSTED" in key for key in seen), sorted(seen)
    assert {"SubmitStage:bulk:RESOURCE_EXHAUSTED", "SubmitStage:disagree:INVALID_ARGUMENT"} <= set(seen), sorted(seen)
    # Nothing moved: no round started or recorded, no device changed, no round opened, no upload left buffered.
    assert list(orchestrator.coordinator.history) == []
    assert targets[-1].channel.unary_unary(status_path)(status, timeout=WAIT) == status_before
    assert orchestrator.registry.devices() == devices_before
    assert aggregator.handler.rounds_held == 2 and aggregator.handler.uploads == {}
    # ... and the legitimate calls still succeed: fz-a's real advertisement was never taken from a mutant.
    upload = apb.SubmitStageRequest(round_id=ROUND, stage=apb.STAGE_ADVERTISE_KEYS, chunk=real_advert)
    stub = agg_rpc.AggregatorServiceStub(targets[3].channel)
    assert stub.SubmitStage(iter([upload]), timeout=WAIT).received_bytes == len(real_advert)
    report = opb.ReportUnavailableRequest(reason=opb.UNAVAILABLE_REASON_BAD_DATA, detail="after the fuzz")
    orch_rpc.OrchestratorServiceStub(targets[5].channel).ReportUnavailable(report, timeout=WAIT)
    no_tracebacks(caplog)
