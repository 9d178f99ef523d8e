"""Differential privacy through the real services: DP-SGD on devices, distributed DP-FedAvg under secure
aggregation, ε in every version's record and in the metrics, and a round refused at the budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.services.test_round_services import serve_until_done
from trainer.privacy import ExampleDP, PrivacyLedger, UserDP
from trainer.store import DirectoryStore

pytestmark = pytest.mark.timeout(300)
DEVICES = {"dp-a": 2, "dp-b": 8, "dp-c": 4, "dp-d": 8}
EXAMPLE = ExampleDP(max_grad_norm=1.0, noise_multiplier=0.8, delta=1e-5)


def run(pki: Path, tmp_path: Path, tokenizer, tiny_model_factory, user: UserDP):
    orchestrator, store_dir = serve_until_done(
        pki, tmp_path, tokenizer, tiny_model_factory, "hetlora-rebase", DEVICES, 3, example_dp=EXAMPLE, user_dp=user
    )
    return orchestrator, DirectoryStore(store_dir)


def test_dp_rounds_record_user_and_example_epsilon(pki: Path, tmp_path: Path, tokenizer, tiny_model_factory) -> None:
    user = UserDP(clip_norm=0.5, noise_multiplier=1.0, delta=1e-5, mode="distributed")
    orchestrator, store = run(pki, tmp_path, tokenizer, tiny_model_factory, user)
    assert [r.state for r in orchestrator.coordinator.history] == ["committed", "committed"]
    first, second = (store.record(v) for v in (1, 2))
    assert 0 < first["privacy"]["epsilon"] < second["privacy"]["epsilon"] < float("inf")
    assert second["privacy"]["unit"] == "user" and second["privacy"]["mode"] == "distributed"
    assert set(second["example_privacy"]) == set(second["reported"])  # every reporting device said what it spent
    for spent in second["example_privacy"].values():
        assert 0 < spent["epsilon"] < float("inf") and spent["delta"] == 1e-5 and spent["accountant"] == "prv"
    user_eps = REGISTRY.get_sample_value("hetlora_privacy_epsilon", {"unit": "user"})
    assert user_eps == pytest.approx(second["privacy"]["epsilon"])
    assert REGISTRY.get_sample_value("hetlora_privacy_epsilon", {"unit": "example"}) > 0


def test_the_orchestrator_refuses_the_round_that_would_pass_the_budget(
    pki: Path, tmp_path: Path, tokenizer, tiny_model_factory
) -> None:
    sigma = 2.0
    one_round = PrivacyLedger(1e-5).epsilon_after(sigma, 1.0)  # the most one round can cost (q ≤ 1)
    two_rounds = PrivacyLedger(1e-5).epsilon_after(sigma, 0.75, 2)  # the least two rounds can (q ≥ 3/4)
    assert one_round < two_rounds
    user = UserDP(clip_norm=0.5, noise_multiplier=sigma, delta=1e-5, epsilon_budget=one_round * 1.001)
    orchestrator, store = run(pki, tmp_path, tokenizer, tiny_model_factory, user)
    coordinator = orchestrator.coordinator
    assert [r.state for r in coordinator.history] == ["committed"] and store.latest_version() == 1
    assert coordinator.refusal is not None and "would be exceeded" in coordinator.refusal
    assert store.record(1)["privacy"]["epsilon"] <= user.epsilon_budget
