"""Waiting devices hold no worker at the orchestrator either: with more devices long-polling for a task than
its thread pool had (64), a call that needs an answer now (GetStatus) is answered at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as rpc
from services.orchestrator.coordinator import RoundSettings
from services.transport import TlsFiles, channel
from tests.services.test_round_services import deploy

WAITING = 100
pytestmark = pytest.mark.timeout(120)


def test_status_is_answered_while_a_hundred_devices_long_poll(pki: Path, tmp_path: Path, tiny_model_factory) -> None:
    devices = {f"p-{i:03d}": 2 for i in range(WAITING)}
    no_round = RoundSettings(rounds=1, per_round=WAITING + 1, min_devices=WAITING + 1)  # everyone just waits
    orchestrator, aggregator, creds, _ = deploy(
        pki, tmp_path, tiny_model_factory, "hetlora-rebase", devices, 2, rounds=no_round
    )
    target, ca = f"127.0.0.1:{orchestrator.port}", (pki / "ca.crt").read_bytes()
    answers: list[grpc.StatusCode] = []
    try:

        def poll(name: str) -> None:
            stub = rpc.OrchestratorServiceStub(channel(target, ca, *creds[name]))
            request = pb.GetTaskRequest(wait_ms=20_000, signing_public_key=b"k" * 32)
            try:
                list(stub.GetTask(request, timeout=30))
            except grpc.RpcError as e:
                answers.append(e.code())

        pollers = [threading.Thread(target=poll, args=(n,), daemon=True) for n in devices]
        for t in pollers:
            t.start()
        coordinator = orchestrator.coordinator
        with coordinator._cond:  # every registered poll notifies this condition: wait (bounded) for all 100
            assert coordinator._cond.wait_for(lambda: len(coordinator._polls) >= WAITING, timeout=20)
        admin = TlsFiles.load(pki, "admin")
        status = rpc.OrchestratorServiceStub(channel(target, admin.ca_pem, admin.cert_pem, admin.key_pem))
        started = time.monotonic()
        reply = status.GetStatus(pb.GetStatusRequest(), timeout=10)
        assert reply.committed_version == 0 and time.monotonic() - started < 2.0
    finally:
        orchestrator.stop(None)
        aggregator.stop(None)
    for t in pollers:
        t.join(timeout=30)
    assert len(answers) == WAITING  # every poll was answered (the server shut down under them)
