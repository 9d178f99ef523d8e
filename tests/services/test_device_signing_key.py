"""A device keeps the signing key it advertised until a task comes (the bad-signature race of a re-poll)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import torch

from secure_agg import Ed25519Signer
from services.device.agent import DeviceAgent
from trainer.factors import ModuleShape


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


class TaskWithKey:
    """Hands out one task whose secure round was opened with ``key``."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def GetTask(self, request: Any, timeout: float) -> Any:  # noqa: N802 - the gRPC method name
        from services.api.hetlora.v1 import orchestrator_pb2 as pb

        yield pb.GetTaskResponse(header=pb.TaskHeader(round_id=3, rank=2, signing_public_key=self.key))


def test_a_task_opened_with_a_key_the_device_no_longer_holds_is_sat_out() -> None:
    """A device that restarted while its earlier poll was pending skips that round instead of being refused."""

    def no_aggregator(target: str) -> Any:
        raise AssertionError("the device must not upload with a key the round was not opened with")

    agent = DeviceAgent(TaskWithKey(b"\x01" * 32), no_aggregator, torch.nn.Linear(2, 2), data=None)  # type: ignore[arg-type]
    assert agent.run_round(wait_s=0.01) is None


def test_a_round_opened_with_an_expired_polls_key_hands_that_key_to_the_next_poll() -> None:
    """The race behind the aggregator's bad-signature refusals, made deterministic: every device's poll expires,
    then the round opens with those polls' keys, then the devices poll again. The task each gets names the key
    its round was opened with, which the device (keeping its pending key) signs with."""
    import threading

    from services.errors import ServiceError
    from services.orchestrator.coordinator import Coordinator, RoundSettings
    from trainer.round_engine import RoundEngine
    from trainer.store import MemoryStore
    from trainer.strategies import StrategyConfig, make_strategy

    shapes = {"layer": ModuleShape(4, 4)}
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, 0)), {}, 2, 0)
    opened: dict[str, bytes] = {}
    was_opened, handed_out = threading.Event(), threading.Event()

    def open_round(config: Any, members: dict[int, tuple[str, bytes]], timeout: float) -> None:
        opened.update(dict(members.values()))
        was_opened.set()

    def no_sums(config: Any, codec: Any, deadline: float) -> Any:
        handed_out.wait(timeout=30)  # the tasks stay assigned until the devices have polled for them
        raise TimeoutError("this test stops at the hand-out")

    settings = RoundSettings(rounds=1, per_round=2, min_devices=2, attempts_per_round=1)
    coordinator = Coordinator(engine, shapes, settings, lambda d: 2, open_round, no_sums)
    first = {d: Ed25519Signer.generate().public_bytes for d in ("dev-1", "dev-2")}
    for device, key in first.items():
        with pytest.raises(ServiceError, match="no task for this device yet"):
            coordinator.check_in(device, key, wait_s=0.01)  # expires: the device is off-line for a moment
    coordinator.start()
    try:
        assert was_opened.wait(timeout=30)
        assert opened == first  # the round was opened with the expired polls' keys
        for device in first:
            task = coordinator.check_in(device, Ed25519Signer.generate().public_bytes, wait_s=10)
            assert task.signing_key == first[device]  # ... and says so, whatever key the new poll advertised
    finally:
        handed_out.set()
        coordinator.stop()
