"""`kill -9` of the orchestrator mid-run: committed versions survive, and a restart resumes the rounds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.aggregator.server import start as start_aggregator
from services.settings import strategy_settings
from tests.services.device_threads import start_devices
from tests.services.processes import start_service
from tests.services.test_round_services import enroll_all
from trainer.store import DirectoryStore

pytestmark = pytest.mark.timeout(400)
DEVICES = {"k-a": 4, "k-b": 8, "k-c": 4, "k-d": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_orchestrator_killed_mid_run_keeps_committed_versions_and_resumes(
    pki: Path, tmp_path: Path, tokenizer, tiny_model_factory
) -> None:
    db, store = tmp_path / "registry.db", tmp_path / "store"
    creds = enroll_all(pki, db, DEVICES)
    aggregator = start_aggregator(pki, "127.0.0.1", 0)
    port = free_port()
    serve = [
        "serve", "orchestrator", "--pki", str(pki), "--registry", str(db), "--store", str(store),
        "--aggregator", f"127.0.0.1:{aggregator.port}", "--port", str(port), "--model", "tiny",
        "--strategy", "hetlora-rebase", "--r-max", "8", "--rounds", "3", "--per-round", "3", "--overselect", "1",
        "--local-steps", "2", "--batch-size", "2", "--stage-timeout", "10", "--round-deadline", "60",
    ]  # fmt: skip
    first = start_service(serve)
    devices = start_devices(f"127.0.0.1:{port}", pki, creds, tokenizer, tiny_model_factory)
    try:
        first.wait_for("committed version 1", timeout=120)
        first.proc.kill()  # SIGKILL: no cleanup, possibly in the middle of round 2
        first.proc.wait(timeout=30)
        committed = DirectoryStore(store).latest_version()
        assert committed >= 1
        DirectoryStore(store).latest()  # what LATEST names is complete and loads
        second = start_service(serve)
        try:
            done = second.wait_for("DONE version=", timeout=180)
        finally:
            second.stop()
    finally:
        devices.finish()
        aggregator.stop(None)
    assert not devices.failures, devices.failures
    final = DirectoryStore(store)
    assert done.strip() == f"DONE version={final.latest_version()}" and final.latest_version() == 3
    assert [final.record(v)["round"] for v in (1, 2, 3)] == [1, 2, 3]  # no round lost or run twice


def test_aggregator_killed_mid_round_fails_that_attempt_and_the_round_is_re_run(
    pki: Path, tmp_path: Path, tokenizer, tiny_model_factory
) -> None:
    from services.api.hetlora.v1 import orchestrator_pb2 as pb
    from services.orchestrator.coordinator import RoundSettings
    from services.orchestrator.server import OrchestratorConfig
    from services.orchestrator.server import start as start_orchestrator
    from trainer.peft_bridge import adapted_modules

    db, store = tmp_path / "registry.db", tmp_path / "store"
    creds = enroll_all(pki, db, DEVICES)
    agg_port = free_port()
    serve_aggregator = ["serve", "aggregator", "--pki", str(pki), "--port", str(agg_port)]
    aggregator = start_service(serve_aggregator)
    cfg = OrchestratorConfig(
        strategy=strategy_settings("hetlora-rebase", 2, 8),
        train=pb.TrainSettings(steps=2, batch_size=2, lr=1e-3),
        rounds=RoundSettings(
            rounds=2, per_round=3, overselect=1.0, min_devices=3, stage_timeout_s=10, round_deadline_s=60
        ),
        aggregator_target=f"127.0.0.1:{agg_port}",
    )
    orchestrator = start_orchestrator(pki, db, store, adapted_modules(tiny_model_factory(0)), cfg, "127.0.0.1", 0)
    devices = start_devices(f"127.0.0.1:{orchestrator.port}", pki, creds, tokenizer, tiny_model_factory)
    try:
        aggregator.wait_for("opened secure round", timeout=120)
        aggregator.proc.kill()  # SIGKILL while the first round's secure aggregation is open
        aggregator.proc.wait(timeout=30)
        restarted = start_service(serve_aggregator)
        try:
            assert orchestrator.coordinator.join(timeout_s=240)
        finally:
            restarted.stop()
    finally:
        devices.finish()
        orchestrator.stop(None)
    history = orchestrator.coordinator.history
    assert history[0].state == "failed" and "secure" in history[0].detail  # the attempt the kill interrupted
    assert [r.round_index for r in history if r.state == "committed"] == [1, 2]
    final = DirectoryStore(store)
    assert final.latest_version() == 2 and [final.record(v)["round"] for v in (1, 2)] == [1, 2]
