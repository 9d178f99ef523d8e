"""A device keeps the signing key it advertised until a task comes (the bad-signature race of a re-poll)."""

from __future__ import annotations

from typing import Any

import grpc
import torch

from services.device.agent import DeviceAgent


class Expired(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


class Orchestrator:
    """Answers every long poll with DEADLINE_EXCEEDED and remembers the key each one advertised."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def GetTask(self, request: Any, timeout: float) -> Any:  # noqa: N802 - the gRPC method name
        self.keys.append(request.signing_public_key)
        raise Expired()


def test_expired_polls_advertise_the_same_key_until_a_task_arrives() -> None:
    """The orchestrator may open a round with the key of a poll that then expires; the device's next poll
    must advertise that same key, or the aggregator refuses its signed advertisement."""
    orchestrator = Orchestrator()
    agent = DeviceAgent(orchestrator, lambda _: None, torch.nn.Linear(2, 2), data=None)  # type: ignore[arg-type]
    assert agent.run_round(wait_s=0.01) is None and agent.run_round(wait_s=0.01) is None
    assert len(orchestrator.keys) == 2 and orchestrator.keys[0] == orchestrator.keys[1]
    assert len(orchestrator.keys[0]) == 32
