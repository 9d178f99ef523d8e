"""Waiting devices hold no worker: with more devices waiting than any thread pool had (the aggregator's was 32),
a device whose stage is open is still answered at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from secure_agg import Ed25519Signer, RoundConfig, SecAggRequirements, Stage
from services.aggregator.client import open_round
from services.aggregator.servicer import STAGE_TO_WIRE
from services.api.hetlora.v1 import aggregator_pb2 as pb
from tests.services.test_aggregator_service import LAYOUT, stub_for

WAITING = 80
pytestmark = pytest.mark.timeout(120)


def test_a_device_is_served_while_eighty_others_long_poll(pki: Path, aggregator) -> None:
    clients = list(range(WAITING + 1))
    config = RoundConfig.create(41, clients, LAYOUT, None, SecAggRequirements(0.05, 0.1))
    members = {c: (f"w-{c}", Ed25519Signer.generate().public_bytes) for c in clients}
    open_round(stub_for(pki, aggregator.port, "service", "service"), config, members, 60)
    stubs = {c: stub_for(pki, aggregator.port, f"w-{c}", "device") for c in clients}
    answers: list[grpc.StatusCode] = []

    def wait_for_share_keys(c: int) -> None:  # opens only once every client advertised: these calls wait
        ask = pb.AwaitStageRequest(round_id=41, stage=STAGE_TO_WIRE[Stage.SHARE_KEYS], wait_ms=20_000)
        try:
            stubs[c].AwaitStage(ask, timeout=30)
        except grpc.RpcError as e:
            answers.append(e.code())

    waiting = [threading.Thread(target=wait_for_share_keys, args=(c,), daemon=True) for c in clients[:WAITING]]
    for t in waiting:
        t.start()
    run = aggregator.handler._round(41)[0]
    with run._cond:  # every registered wait notifies this condition: wait (bounded) until all 80 are in
        assert run._cond.wait_for(lambda: len(run._waiting) >= WAITING, timeout=20)
    started = time.monotonic()
    ask = pb.AwaitStageRequest(round_id=41, stage=STAGE_TO_WIRE[Stage.ADVERTISE_KEYS], wait_ms=1000)
    reply = stubs[WAITING].AwaitStage(ask, timeout=10)
    assert reply.client_id == WAITING and time.monotonic() - started < 2.0
    aggregator.handler._round(41)[0].abort("the test is done")
    for t in waiting:
        t.join(timeout=30)
    assert answers and set(answers) == {grpc.StatusCode.ABORTED}
