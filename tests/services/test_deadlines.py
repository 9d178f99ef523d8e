"""Server-side deadlines (services/deadlines.py): a stalled stream is ended after its idle timeout and its buffer
dropped, a call is ended at its cap, and a long poll the client cancels lets go of its registration at once.

Real services on loopback; the caps are made small here so each case takes well under a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from secure_agg import Ed25519Directory, Ed25519Signer, RoundConfig, SecAggClient, SecAggRequirements, Stage
from services.aggregator.client import open_round
from services.aggregator.server import RunningAggregator
from services.aggregator.server import start as start_aggregator
from services.aggregator.servicer import STAGE_TO_WIRE
from services.aggregator.stage_round import StageRound
from services.aio_transport import AioServer
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.api.hetlora.v1 import orchestrator_pb2 as opb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as orpc
from services.deadlines import CAPS_S, Deadlines
from services.orchestrator.coordinator import RoundSettings
from services.registry import DeviceRegistry
from services.transport import channel
from tests.services.test_aggregator_service import LAYOUT, stub_for

pytestmark = pytest.mark.timeout(60)
IDLE_S = 0.3
POLL_CAP_S = 0.5
QUICK = Deadlines(caps_s={**CAPS_S, "AggregatorService/AwaitStage": POLL_CAP_S}, idle_s=IDLE_S)


@pytest.fixture
def quick_aggregator(pki: Path) -> Iterator[RunningAggregator]:
    """An aggregator whose streams idle out after 0.3 s and whose AwaitStage is capped at 0.5 s."""
    running = start_aggregator(pki, "127.0.0.1", 0, deadlines=QUICK)
    yield running
    running.stop(None)


def open_two_client_round(pki: Path, aggregator: RunningAggregator, round_id: int) -> tuple[StageRound, bytes]:
    """A round of clients 0 and 1 (devices d-0, d-1); returns it and client 0's real advertisement."""
    config = RoundConfig.create(round_id, [0, 1], LAYOUT, None, SecAggRequirements(0.05, 0.1))
    signers = {c: Ed25519Signer.generate() for c in (0, 1)}
    members = {c: (f"d-{c}", s.public_bytes) for c, s in signers.items()}
    open_round(stub_for(pki, aggregator.port, "service", "service"), config, members, 30)
    verifier = Ed25519Directory({c: s.public_bytes for c, s in signers.items()})
    advert = SecAggClient.start(0, config, signers[0], verifier).advertise_keys().to_bytes()
    return aggregator.handler._round(round_id)[0], advert


def share_keys_wait(round_id: int, wait_ms: int) -> pb.AwaitStageRequest:
    """SHARE_KEYS opens only once both clients advertised: in these tests this call always waits."""
    return pb.AwaitStageRequest(round_id=round_id, stage=STAGE_TO_WIRE[Stage.SHARE_KEYS], wait_ms=wait_ms)


def test_a_stalled_upload_ends_after_the_idle_timeout_its_buffer_dropped_and_a_retry_succeeds(
    pki: Path, quick_aggregator: RunningAggregator
) -> None:
    run, advert = open_two_client_round(pki, quick_aggregator, 71)
    device = stub_for(pki, quick_aggregator.port, "d-0", "device")
    wire = STAGE_TO_WIRE[Stage.ADVERTISE_KEYS]
    release = threading.Event()

    def first_chunk_then_nothing() -> Iterator[pb.SubmitStageRequest]:
        yield pb.SubmitStageRequest(round_id=71, stage=wire, chunk=advert[:16])
        release.wait(30)  # the peer stalls: no further chunk, no end of stream

    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as info:
            device.SubmitStage(first_chunk_then_nothing(), timeout=20)
    finally:
        release.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"no chunk for {IDLE_S:g} s" in (info.value.details() or "")
    assert IDLE_S <= time.monotonic() - started < 5
    assert quick_aggregator.handler.uploads == {}  # dropped before the status was sent
    assert 0 not in run._arrived
    # The device is free to send it again, whole: nothing of the stalled upload counted.
    whole = iter([pb.SubmitStageRequest(round_id=71, stage=wire, chunk=advert)])
    assert device.SubmitStage(whole, timeout=10).received_bytes == len(advert)


def test_a_long_poll_past_its_server_cap_ends_with_deadline_exceeded_and_is_deregistered(
    pki: Path, quick_aggregator: RunningAggregator
) -> None:
    run, _ = open_two_client_round(pki, quick_aggregator, 72)
    device = stub_for(pki, quick_aggregator.port, "d-0", "device")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:  # asks to wait 10 s; the server caps the call at 0.5 s
        device.AwaitStage(share_keys_wait(72, 10_000), timeout=20)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"{POLL_CAP_S:g} s cap" in (info.value.details() or "")
    assert POLL_CAP_S <= time.monotonic() - started < 5
    with run._cond:
        assert run._cond.wait_for(lambda: not run._waiting, timeout=5)
    assert not run._wake._wakers


def test_a_stage_wait_cancelled_by_the_client_is_deregistered_at_once(pki: Path, aggregator) -> None:
    run, _ = open_two_client_round(pki, aggregator, 73)  # default caps: only the client ends this wait
    device = stub_for(pki, aggregator.port, "d-0", "device")
    call = device.AwaitStage.future(share_keys_wait(73, 20_000), timeout=30)
    with run._cond:
        assert run._cond.wait_for(lambda: 0 in run._waiting, timeout=10)
    cancelled = time.monotonic()
    call.cancel()
    with run._cond:  # a dropped wait notifies the condition: wait (bounded) for it
        assert run._cond.wait_for(lambda: 0 not in run._waiting, timeout=5)
    assert time.monotonic() - cancelled < 2
    assert not run._wake._wakers


def test_a_task_poll_cancelled_by_the_device_is_deregistered_at_once(
    pki: Path, tmp_path: Path, tiny_model_factory
) -> None:
    from tests.services.test_round_services import deploy

    no_round = RoundSettings(rounds=1, per_round=2, min_devices=2)  # one device never makes a round
    orchestrator, aggregator, creds, _ = deploy(
        pki, tmp_path, tiny_model_factory, "hetlora-rebase", {"c-1": 2}, 2, rounds=no_round
    )
    try:
        target = f"127.0.0.1:{orchestrator.port}"
        stub = orpc.OrchestratorServiceStub(channel(target, (pki / "ca.crt").read_bytes(), *creds["c-1"]))
        call = stub.GetTask(opb.GetTaskRequest(wait_ms=20_000, signing_public_key=b"k" * 32), timeout=30)
        coordinator = orchestrator.coordinator
        with coordinator._cond:
            assert coordinator._cond.wait_for(lambda: "c-1" in coordinator._polls, timeout=10)
        cancelled = time.monotonic()
        call.cancel()
        with coordinator._cond:
            assert coordinator._cond.wait_for(lambda: not coordinator._polls, timeout=5)
        assert time.monotonic() - cancelled < 2
        assert not coordinator._wake._wakers
    finally:
        orchestrator.stop(None)
        aggregator.stop(None)


class _EndlessTask(orpc.OrchestratorServiceServicer):
    """An orchestrator whose GetTask streams big chunks: a reader that stops reading stalls the server's writes."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    async def GetTask(  # type: ignore[override]  # noqa: N802  # the aio servicer shape
        self, request: opb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.GetTaskResponse]:
        try:
            for _ in range(64):  # 256 MB: far past any flow-control window
                yield opb.GetTaskResponse(factors_chunk=bytes(4_000_000))
        finally:
            self.closed.set()


def test_a_reader_that_stalls_a_task_download_is_ended_after_the_idle_timeout(pki: Path) -> None:
    servicer = _EndlessTask()
    server = AioServer(8 << 20, 8 << 20, "test-orchestrator", Deadlines(idle_s=IDLE_S))
    server.add_servicer(opb.DESCRIPTOR.services_by_name["OrchestratorService"], servicer)
    port = server.bind("127.0.0.1:0", None)
    server.start()
    try:
        stub = orpc.OrchestratorServiceStub(channel(f"127.0.0.1:{port}", None, max_message_bytes=8 << 20))
        responses = stub.GetTask(opb.GetTaskRequest(), timeout=20)
        next(responses)  # then the device reads nothing more
        assert servicer.closed.wait(5)  # the server gave up the stream (and the task bytes) by itself
        with pytest.raises(grpc.RpcError) as info:
            for _ in responses:
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"read nothing for {IDLE_S:g} s" in (info.value.details() or "")
    finally:
        server.stop(None)


def test_an_enrollment_behind_a_stuck_registry_is_answered_unavailable_within_the_bound(
    pki: Path, enrollment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread-pool enrollment server cannot cancel a handler, so its one wait (the registry) is bounded."""
    from tests.services.test_enrollment_service import enroll

    monkeypatch.setattr("services.registry.BUSY_TIMEOUT_S", 0.2)
    registry: DeviceRegistry = enrollment.registry
    token, _ = registry.issue_token("late-1", 60, int(time.time()))
    registry._lock.acquire()  # another call that never lets go of the registry
    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as info:
            enroll(pki, enrollment, token)
    finally:
        registry._lock.release()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "registry stayed busy for 0.2 s" in (info.value.details() or "")
    assert time.monotonic() - started < 5
    assert enroll(pki, enrollment, token).device_id == "late-1"  # the token was not spent: retrying works
