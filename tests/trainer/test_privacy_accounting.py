"""Golden ε values against the spec's measured Opacus numbers (secure-aggregation-and-dp.md §0 rows 14-15)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.privacy import ExampleDP, PrivacyLedger, UserDP, noise_for_target


@pytest.mark.parametrize(
    ("sigma", "rdp", "prv"),
    [(1.0, 6.1, 5.5), (1.5, 2.95, 2.7), (0.8, 9.9, 8.9)],
)
def test_user_level_budget_matches_the_spec_table(sigma: float, rdp: float, prv: float) -> None:
    # 1000 clients, 50 Poisson-sampled per round, 200 rounds, δ = 1e-6 (row 15)
    for accountant, expected in (("rdp", rdp), ("prv", prv)):
        ledger = PrivacyLedger(1e-6, accountant)
        ledger.spend(sigma, 0.05, 200)
        assert ledger.epsilon() == pytest.approx(expected, abs=0.05), accountant


def test_example_level_noise_for_a_target_matches_the_spec_table() -> None:
    # N = 10k, B = 64, 3 epochs, δ = 1e-5 (row 14): ε = 1 needs σ = 1.084 (RDP) / 0.925 (PRV)
    steps = int(3 / (64 / 10_000))
    assert noise_for_target(1.0, 1e-5, 64 / 10_000, steps, "rdp") == pytest.approx(1.084, abs=0.005)
    assert noise_for_target(1.0, 1e-5, 64 / 10_000, steps, "prv") == pytest.approx(0.925, abs=0.005)
    assert noise_for_target(8.0, 1e-5, 64 / 10_000, steps, "prv") == pytest.approx(0.489, abs=0.005)


def test_ledger_merges_equal_steps_asks_without_spending_and_survives_json() -> None:
    ledger = PrivacyLedger(1e-6, "rdp")
    assert ledger.epsilon() == 0.0
    ledger.spend(1.0, 0.05, 100)
    ahead = ledger.epsilon_after(1.0, 0.05, 100)
    assert ledger.history == [(1.0, 0.05, 100)]  # asking did not spend
    ledger.spend(1.0, 0.05, 100)
    assert ledger.history == [(1.0, 0.05, 200)] and ledger.epsilon() == pytest.approx(ahead)
    ledger.spend(2.0, 0.1)
    again = PrivacyLedger.from_json(ledger.to_json())
    assert again == ledger and again.epsilon() == pytest.approx(ledger.epsilon())


@settings(max_examples=25, deadline=None)
@given(
    st.floats(0.5, 3.0),
    st.floats(0.01, 0.5),
    st.integers(1, 50),
    st.integers(1, 50),
)
def test_epsilon_only_grows_with_more_rounds(sigma: float, q: float, first: int, more: int) -> None:
    ledger = PrivacyLedger(1e-6, "rdp")
    ledger.spend(sigma, q, first)
    before = ledger.epsilon()
    ledger.spend(sigma, q, more)
    assert ledger.epsilon() >= before > 0


def test_settings_refuse_what_cannot_work_with_the_fix_in_the_message() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ExampleDP(max_grad_norm=1.0)
    with pytest.raises(ValueError, match="max_grad_norm = ∞"):
        ExampleDP(max_grad_norm=math.inf, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="accountant"):
        PrivacyLedger(1e-6, "gdp-typo")
    with pytest.raises(ValueError, match="positive finite noise"):
        PrivacyLedger(1e-6).spend(0.0, 0.1)
    with pytest.raises(ValueError, match="finite positive clip_norm"):
        UserDP(clip_norm=math.inf, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="'central' or 'distributed'"):
        UserDP(clip_norm=1.0, noise_multiplier=1.0, mode="local")


def test_a_target_epsilon_is_reached_after_the_horizon_not_before() -> None:
    dp = ExampleDP(max_grad_norm=1.0, target_epsilon=3.0, delta=1e-6, accountant="rdp", rounds_horizon=10)
    sigma = dp.noise(sample_rate=0.25, steps_per_round=5)
    ledger = PrivacyLedger(1e-6, "rdp")
    for _ in range(9):
        ledger.spend(sigma, 0.25, 5)
    assert ledger.epsilon() < 3.0
    ledger.spend(sigma, 0.25, 5)
    assert ledger.epsilon() == pytest.approx(3.0, abs=0.05)
