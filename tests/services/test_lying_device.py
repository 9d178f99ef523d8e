"""One enrolled device follows the protocol while lying about its content, through the real services.

Round 1 it reports a NaN loss, round 2 a rank of 1000: both refused with INVALID_ARGUMENT naming the field, the
liar is a dropout and nothing it said is stored. Round 3 it sends random ring values as its masked input: the
decoded sums are out of range, that attempt is not committed, an alert-worthy counter moves, and the re-run
(where it behaves) commits an adapter of honest size.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

import services.device.secure_upload as secure_upload_module
from services.device.agent import DeviceAgent, all_rounds_finished
from services.registry import DeviceRegistry
from tests.services.device_threads import start_devices
from tests.services.test_round_services import deploy, device_data
from trainer.fingerprint import model_fingerprint
from trainer.store import DirectoryStore

pytestmark = pytest.mark.timeout(300)
RANKS = {"honest-a": 4, "honest-b": 4, "liar": 8}
LIES = [{"train_loss": float("nan")}, {"rank": 1000}]  # rounds 1 and 2; round 3 lies in the masked input


class Liar:
    """A device agent whose reports and first masked input of round 3 are whatever the test scripts."""

    def __init__(self) -> None:
        self.round = 0
        self.refusals: list[tuple[grpc.StatusCode, str]] = []
        self.ring_lie_sent = False

    def report(self, real):  # type: ignore[no-untyped-def]
        """Wraps the real training: the report of round k carries LIES[k]."""

        def run_task(*args, **kwargs):  # type: ignore[no-untyped-def]
            report = real(*args, **kwargs)
            self.round += 1
            return dataclasses.replace(report, **LIES[self.round - 1]) if self.round <= len(LIES) else report

        return run_task

    def encode(self, real):  # type: ignore[no-untyped-def]
        """Random ring values of the right length, once, from the liar's thread only."""

        def encode_weighted(values, weight, level, layout, codec, rng):  # type: ignore[no-untyped-def]
            honest = real(values, weight, level, layout, codec, rng)
            if threading.current_thread().name != "liar" or self.round <= len(LIES) or self.ring_lie_sent:
                return honest
            self.ring_lie_sent = True
            return np.random.default_rng(7).integers(0, 2**32, honest.shape[0], dtype=np.uint64).astype(np.uint32)

        return encode_weighted


def test_a_lying_device_cannot_move_the_model_the_records_or_its_rank(
    pki: Path, tmp_path: Path, tokenizer, tiny_model_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import REGISTRY

    def rejected() -> float:
        return REGISTRY.get_sample_value("hetlora_rounds_total", {"outcome": "rejected"}) or 0.0

    def refused(field: str) -> float:
        return REGISTRY.get_sample_value("hetlora_reports_refused_total", {"field": field}) or 0.0

    before = rejected(), refused("train_loss"), refused("rank_after")
    orchestrator, aggregator, creds, store_dir = deploy(
        pki, tmp_path, tiny_model_factory, "hetlora-rebase", RANKS, per_round=3, rounds=_rounds(3)
    )
    liar = Liar()
    monkeypatch.setattr(secure_upload_module, "encode_weighted", liar.encode(secure_upload_module.encode_weighted))
    honest = start_devices(
        f"127.0.0.1:{orchestrator.port}",
        pki,
        {n: c for n, c in creds.items() if n != "liar"},
        tokenizer,
        tiny_model_factory,
    )
    model = tiny_model_factory(0)
    (data,) = [c for c in device_data(tokenizer, list(RANKS)) if c.client_id == "liar"]
    agent = DeviceAgent.connect(
        f"127.0.0.1:{orchestrator.port}",
        (pki / "ca.crt").read_bytes(),
        *creds["liar"],
        model,
        data,
        fingerprint=model_fingerprint("tiny", model),
    )
    agent.run_task = liar.report(agent.run_task)  # type: ignore[method-assign]

    def lie() -> None:
        for _ in range(100):  # bounded; each check-in waits at most 2 s
            try:
                agent.run_round(wait_s=2.0)
            except grpc.RpcError as e:
                if all_rounds_finished(e):
                    return
                liar.refusals.append((e.code(), e.details() or ""))
            except Exception:  # a round it was put out of: its secure upload is refused
                continue

    thread = threading.Thread(target=lie, name="liar")
    thread.start()
    try:
        assert orchestrator.coordinator.join(timeout_s=240)
    finally:
        honest.finish()
        thread.join(timeout=60)
        orchestrator.stop(None)
        aggregator.stop(None)
    assert not honest.failures, honest.failures
    assert [(code, details.split(":")[0]) for code, details in liar.refusals[:2]] == [
        (grpc.StatusCode.INVALID_ARGUMENT, "train_loss"),
        (grpc.StatusCode.INVALID_ARGUMENT, "rank_after"),
    ]
    history = list(orchestrator.coordinator.history)
    states = [(r.round_index, r.state) for r in history]
    assert states == [(1, "committed"), (2, "committed"), (3, "rejected"), (3, "committed")], states
    assert "out of range" in history[2].detail
    assert (rejected(), refused("train_loss"), refused("rank_after")) == tuple(b + 1 for b in before)  # the alerts
    store = DirectoryStore(store_dir)
    for version in (1, 2):
        record = store.record(version)
        assert "liar" in record["dropped"] and "liar" not in record["ranks"]  # nothing it said is stored
        assert history[version - 1].detail.startswith("mean train loss") and "nan" not in history[version - 1].detail
    assert orchestrator.coordinator.engine.device_ranks["liar"] == 8
    _, adapter = store.latest()
    assert max(float(np.abs(f.B).max()) for f in adapter.factors.values()) < 1.0  # honest-sized, not 9e6
    registry = DeviceRegistry(tmp_path / "registry.db")
    assert registry.get("liar").rank == 8  # type: ignore[union-attr]
    registry.close()


def _rounds(n: int):  # type: ignore[no-untyped-def]
    from services.orchestrator.coordinator import RoundSettings

    return RoundSettings(rounds=n, per_round=3, overselect=1.0, min_devices=3, stage_timeout_s=20, round_deadline_s=120)
