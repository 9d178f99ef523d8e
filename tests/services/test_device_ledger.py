"""A device keeps its example-level ledger on disk: restarts continue it, and a changed δ is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.device.agent import DeviceAgent
from services.errors import ServiceError
from services.privacy_settings import example_dp_message, spend_from
from trainer.privacy import ExampleDP


def header(delta: float) -> pb.TaskHeader:
    dp = ExampleDP(max_grad_norm=1.0, noise_multiplier=1.0, delta=delta)
    return pb.TaskHeader(train=pb.TrainSettings(steps=2, batch_size=2, lr=1e-3, example_dp=example_dp_message(dp)))


def test_ledger_survives_a_restart_and_refuses_a_different_delta(tmp_path: Path, tiny_model_factory) -> None:
    path = tmp_path / "privacy_ledger.json"
    model = tiny_model_factory(0)
    agent = DeviceAgent(None, lambda target: None, model, None, ledger_path=path)  # type: ignore[arg-type]
    privacy = agent._privacy(header(1e-6))
    assert privacy.ledger is not None and privacy.example is not None
    privacy.ledger.spend(1.0, 0.1, 5)  # what a round of DP-SGD records
    agent.save_ledger()
    again = DeviceAgent(None, lambda target: None, model, None, ledger_path=path)  # type: ignore[arg-type]
    assert again.ledger is not None and again.ledger.history == [(1.0, 0.1, 5)]
    assert again._privacy(header(1e-6)).ledger is again.ledger  # continues, does not start over
    with pytest.raises(ValueError, match="would not add up"):
        again._privacy(header(1e-5))


def test_reported_spend_is_validated() -> None:
    good = pb.ExamplePrivacySpent(epsilon=2.0, delta=1e-6, accountant="prv", noise_multiplier=1.0, sample_rate=0.1)
    assert spend_from(pb.ReportTrainingRequest(example_privacy=good)).epsilon == 2.0
    assert spend_from(pb.ReportTrainingRequest()) is None
    for bad in (dict(epsilon=float("nan")), dict(epsilon=-1.0), dict(delta=0.0), dict(accountant="moments")):
        fields = {"epsilon": 2.0, "delta": 1e-6, "accountant": "prv", **bad}
        with pytest.raises(ServiceError, match="example_privacy"):
            spend_from(pb.ReportTrainingRequest(example_privacy=pb.ExamplePrivacySpent(**fields)))
