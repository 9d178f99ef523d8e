"""The orchestrator's memory grows with the cohort, not with the rounds run: round history is bounded."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from secure_agg import Ed25519Signer
from services.orchestrator.coordinator import HISTORY_ROUNDS, Coordinator, RoundSettings
from trainer.factors import ModuleShape
from trainer.round_engine import RoundEngine
from trainer.store import MemoryStore
from trainer.strategies import StrategyConfig, make_strategy


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the aggregator is down"


def test_round_history_is_bounded_however_many_rounds_run() -> None:
    shapes = {"layer": ModuleShape(4, 4)}
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, 0)), {}, 2, 0)

    def aggregator_down(config: Any, members: Any, timeout: float) -> None:
        raise Unavailable()

    rounds = HISTORY_ROUNDS + 20
    settings = RoundSettings(rounds=rounds, per_round=2, min_devices=2, attempts_per_round=1)
    coordinator = Coordinator(engine, shapes, settings, lambda d: 2, aggregator_down, lambda *a: ((), ()))
    for device in ("dev-1", "dev-2"):  # checked in (what check_in records), and never polling again
        engine.device_ranks[device] = 2
        coordinator._seen[device] = (coordinator._clock(), Ed25519Signer.generate().public_bytes)
    coordinator.start()
    assert coordinator.join(timeout_s=60)  # every round failed to open, one attempt each: the loop ran out
    assert len(coordinator.history) == HISTORY_ROUNDS and len(coordinator.outcomes) == HISTORY_ROUNDS
    assert coordinator.history[-1].round_index == rounds and coordinator.history[0].round_index == rounds - 63
    assert all(r.state == "failed" and "aggregator is down" in r.detail for r in coordinator.history)


def test_one_outstanding_poll_per_device_a_newer_one_replaces_the_older() -> None:
    """A device (or an attacker with its certificate) cannot hold many waiting calls: each new check-in ends
    its previous one at once with DEADLINE_EXCEEDED ("ask again"), which frees that call's thread."""
    import threading

    import pytest

    from services.errors import ServiceError

    shapes = {"layer": ModuleShape(4, 4)}
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, 0)), {}, 2, 0)
    settings = RoundSettings(rounds=1, per_round=2, min_devices=2)
    coordinator = Coordinator(engine, shapes, settings, lambda d: 2, lambda *a: None, lambda *a: ((), ()))
    key = Ed25519Signer.generate().public_bytes
    outcome: list[BaseException] = []
    started = threading.Event()

    def first_poll() -> None:
        started.set()
        try:
            coordinator.check_in("dev-1", key, wait_s=30)
        except ServiceError as e:
            outcome.append(e)

    older = threading.Thread(target=first_poll)
    older.start()
    assert started.wait(timeout=10)
    for _ in range(1000):  # bounded (10 s): the first poll registers as soon as its thread runs
        if "dev-1" in coordinator._polls:
            break
        older.join(timeout=0.01)
    with pytest.raises(ServiceError, match="no task for this device yet"):
        coordinator.check_in("dev-1", key, wait_s=0.05)
    older.join(timeout=10)
    assert not older.is_alive() and "superseded by a newer check-in" in str(outcome[0])
    assert coordinator._polls == {}


def test_a_device_waiting_in_a_long_poll_stays_present_past_presence_s() -> None:
    """A check-in waits up to 40 s, longer than ``presence_s``: the device is available for as long as its
    poll waits, and only a device that stopped polling ages out."""
    now = [0.0]
    shapes = {"layer": ModuleShape(4, 4)}
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, 0)), {}, 2, 0)
    settings = RoundSettings(rounds=1, per_round=2, min_devices=2, presence_s=15.0)
    coordinator = Coordinator(
        engine, shapes, settings, lambda d: 2, lambda *a: None, lambda *a: ((), ()), clock=lambda: now[0]
    )
    key = Ed25519Signer.generate().public_bytes
    waiting = coordinator._register("dev-waiting", key)  # its poll is outstanding
    gone = coordinator._register("dev-gone", key)
    with coordinator._cond:
        coordinator._drop_poll("dev-gone", gone)  # its poll ended (cancelled) and it never came back
    now[0] = 30.0
    assert coordinator._present() == ["dev-waiting"]
    with coordinator._cond:
        coordinator._drop_poll("dev-waiting", waiting)
    assert coordinator._present() == []


def test_a_member_that_checks_in_again_before_reporting_gets_its_task_again() -> None:
    """A stalled reader's task stream is dropped by the idle timeout (or the call hangs on the device and its
    watchdog cancels it): the device checks in again with the key the round was opened with and must get the
    same task, not sit the round out. A new key (a restarted device) or a report already in gets nothing."""
    from services.errors import ServiceError
    from services.orchestrator.round_types import Assignment, RoundRecord
    from trainer.device import Report

    shapes = {"layer": ModuleShape(4, 4)}
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, 0)), {}, 2, 0)
    coordinator = Coordinator(
        engine, shapes, RoundSettings(rounds=1, per_round=2), lambda d: 2, lambda *a: None, lambda *a: ((), ())
    )
    key, other = Ed25519Signer.generate().public_bytes, Ed25519Signer.generate().public_bytes
    task = Assignment(7, 1, 0, 2, 0, b"npz", (2, 4), 2, (), key)
    coordinator._current = RoundRecord(7, 1, "training", 0, ("dev-1", "dev-2"))
    coordinator._handed = {"dev-1": task, "dev-2": task}
    assert coordinator.check_in("dev-1", key, wait_s=1.0) == task
    assert coordinator.check_in("dev-1", key, wait_s=1.0) == task  # and again, while it has not reported
    with pytest.raises(ServiceError, match="no task"):
        coordinator.check_in("dev-1", other, wait_s=0.01)
    coordinator._reports["dev-2"] = Report("dev-2", 2, 2, None, 1.0, 1)
    with pytest.raises(ServiceError, match="no task"):
        coordinator.check_in("dev-2", key, wait_s=0.01)
    with coordinator._cond:
        coordinator._end_assignments(["dev-1", "dev-2"])
    with pytest.raises(ServiceError, match="no task"):
        coordinator.check_in("dev-1", key, wait_s=0.01)
