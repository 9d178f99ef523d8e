"""The coordinator trusts a device only as far as the server assigned: revocation at every step, checked reports,
sums that must be in range. The aggregator is a fake here; test_lying_device.py runs the real services."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from secure_agg import BucketOutcome, BucketStatus, BucketSum, Ed25519Signer
from services.errors import ServiceError
from services.orchestrator.coordinator import Coordinator, DeviceTrust, RoundSettings
from services.orchestrator.listeners import RoundSummary
from services.orchestrator.report_check import ReportLimits, expected_upload_floats
from trainer.device import Report
from trainer.factors import ModuleShape
from trainer.round_engine import RoundEngine
from trainer.store import MemoryStore
from trainer.strategies import StrategyConfig, make_strategy

pytestmark = pytest.mark.timeout(60)
SHAPES = {"layer": ModuleShape(4, 4)}
DEVICES = ("dev-1", "dev-2", "dev-3")


@dataclass
class FakeAggregator:
    """Records what the coordinator opens and excludes; hands back sums when the test releases them."""

    sums: tuple[BucketSum, ...] = ()
    survivors: tuple[int, ...] = ()
    summed: set[int] = field(default_factory=set)  # client ids the fake says it already summed
    opened: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    config: Any = None
    excluded: list[tuple[list[int], str]] = field(default_factory=list)
    was_excluded: threading.Event = field(default_factory=threading.Event)

    def open(self, config: Any, members: dict, timeout: float) -> None:
        self.config = config
        self.opened.set()

    def result(self, config: Any, codec: Any, deadline: float) -> Any:
        assert self.release.wait(timeout=30)
        if not self.sums:
            raise TimeoutError("the test ended before any sums")
        return self.sums, self.survivors

    def exclude(self, round_id: int, clients: list[int], why: str) -> tuple[int, ...]:
        self.excluded.append((clients, why))
        self.was_excluded.set()
        return tuple(c for c in clients if c in self.summed)


class Summaries:
    def __init__(self) -> None:
        self.finished: list[RoundSummary] = []

    def round_started(self, index: int, ranks: Any) -> None: ...

    def round_finished(self, summary: RoundSummary) -> None:
        self.finished.append(summary)


@pytest.fixture
def harness() -> Iterator[tuple[Coordinator, FakeAggregator, set[str], Summaries]]:
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(SHAPES, 0)), {}, 3, 0)
    fake, revoked, summaries = FakeAggregator(), set[str](), Summaries()
    trust = DeviceTrust(
        revoked=lambda d: d in revoked,
        revoked_now=lambda: frozenset(revoked),
        exclude=fake.exclude,
        limits=ReportLimits(r_min=strategy.config.r_min),
    )
    settings = RoundSettings(rounds=1, per_round=3, min_devices=2, attempts_per_round=1, checkin_window_s=5)
    coordinator = Coordinator(
        engine, SHAPES, settings, lambda d: 4, fake.open, fake.result, listener=summaries, trust=trust
    )
    coordinator.guard.poll_s = 0.05
    yield coordinator, fake, revoked, summaries
    fake.release.set()
    coordinator.stop()


def check_in_all(coordinator: Coordinator, devices: tuple[str, ...]) -> None:
    for d in devices:
        with pytest.raises(ServiceError):
            coordinator.check_in(d, Ed25519Signer.generate().public_bytes, wait_s=0.01)


def honest(device: str, rank: int = 4) -> Report:
    return Report(device, rank, rank, None, 2.5, 40, declared_upload_floats=expected_upload_floats(SHAPES, rank, False))


def test_a_revoked_device_is_never_sampled(harness) -> None:
    coordinator, fake, revoked, _ = harness
    revoked.add("dev-2")
    check_in_all(coordinator, DEVICES)
    coordinator.start()
    assert fake.opened.wait(timeout=30)
    assert coordinator.history[-1].cohort == ("dev-1", "dev-3")


def test_a_device_revoked_while_its_poll_waits_gets_no_task_and_is_put_out_of_the_round(harness) -> None:
    coordinator, fake, revoked, _ = harness
    check_in_all(coordinator, DEVICES)
    coordinator.start()
    assert fake.opened.wait(timeout=30)
    revoked.add("dev-2")
    with pytest.raises(ServiceError) as refused:
        coordinator.check_in("dev-2", Ed25519Signer.generate().public_bytes, wait_s=5)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED and "revoked" in refused.value.message
    assert coordinator.guard.excluded("dev-2") == "revoked"
    task = coordinator.check_in("dev-1", Ed25519Signer.generate().public_bytes, wait_s=5)
    assert task.rank == 4


def test_a_device_revoked_mid_round_is_excluded_at_the_aggregator_within_a_poll(harness) -> None:
    coordinator, fake, revoked, _ = harness
    check_in_all(coordinator, DEVICES)
    coordinator.start()
    assert fake.opened.wait(timeout=30)
    revoked.add("dev-3")  # e.g. while it runs the secure stages: it is not calling the orchestrator
    assert fake.was_excluded.wait(timeout=5)  # the guard polls revocations every 0.05 s here
    assert fake.excluded == [([2], "revoked")]  # dev-3 is client 2


LIES = {
    "train_loss": [{"train_loss": float("nan")}, {"train_loss": float("inf")}, {"train_loss": -1e308}],
    "num_examples": [{"num_examples": 2**64 - 1}, {"num_examples": 0}],
    "rank_after": [{"rank": 1000}, {"rank": 1}],
    "rank_before": [{"rank_before": 8}],
    "upload_floats": [{"declared_upload_floats": 7}],
}
CASES = [(name, lie) for name, lies in LIES.items() for lie in lies]


@pytest.mark.parametrize(("field_name", "lie"), CASES, ids=[f"{n}={next(iter(v.values()))}" for n, v in CASES])
def test_a_report_an_honest_device_could_not_send_is_refused_naming_the_field(harness, field_name, lie) -> None:
    coordinator, fake, _, _ = harness
    check_in_all(coordinator, DEVICES)
    coordinator.start()
    assert fake.opened.wait(timeout=30)
    round_id = coordinator.history[-1].round_id
    bad = dataclasses.replace(honest("dev-1"), **lie)
    with pytest.raises(ServiceError) as refused:
        coordinator.report("dev-1", round_id, bad)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message.startswith(f"{field_name}:")
    assert coordinator.guard.excluded("dev-1") == f"report refused ({field_name})"
    assert coordinator.engine.device_ranks["dev-1"] == 4  # nothing the lie said was stored
    with pytest.raises(ServiceError) as again:
        coordinator.report("dev-1", round_id, honest("dev-1"))
    assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION  # out of the round: a dropout
    coordinator.report("dev-2", round_id, honest("dev-2"))  # honest devices are unaffected


def _bucket(values: np.ndarray, weight: float, cohort: int) -> BucketSum:
    return BucketSum(BucketOutcome(0, cohort, BucketStatus.UNMASKED), values.astype(np.float32), weight)


def test_sums_out_of_range_are_not_committed_and_say_so(harness) -> None:
    coordinator, fake, _, summaries = harness
    check_in_all(coordinator, DEVICES)
    coordinator.start()
    assert fake.opened.wait(timeout=30)
    width = fake.config.layout.sizes[0]
    fake.sums, fake.survivors = (_bucket(np.full(width, 9.25e6), 3.0, 3),), (0, 1, 2)
    fake.release.set()
    assert coordinator.join(timeout_s=30)
    record = coordinator.history[-1]
    assert record.state == "rejected" and "out of range" in record.detail
    assert coordinator.engine.store.latest()[0] == 0  # no version committed
    assert summaries.finished[-1].rejected == "sum_out_of_range"


def test_sums_that_include_a_device_put_out_after_its_upload_are_not_committed(harness) -> None:
    coordinator, fake, _, summaries = harness
    check_in_all(coordinator, DEVICES)
    coordinator.start()
    assert fake.opened.wait(timeout=30)
    round_id = coordinator.history[-1].round_id
    fake.summed = {0}  # dev-1 uploaded before reporting
    with pytest.raises(ServiceError):
        coordinator.report("dev-1", round_id, dataclasses.replace(honest("dev-1"), train_loss=float("nan")))
    width = fake.config.layout.sizes[0]
    fake.sums, fake.survivors = (_bucket(np.zeros(width), 3.0, 3),), (0, 1, 2)
    fake.release.set()
    assert coordinator.join(timeout_s=30)
    assert coordinator.history[-1].state == "rejected" and "dev-1" in coordinator.history[-1].detail
    assert coordinator.engine.store.latest()[0] == 0
    assert summaries.finished[-1].rejected == "excluded_device"
    assert summaries.finished[-1].refused_reports == (("train_loss", 1),)
