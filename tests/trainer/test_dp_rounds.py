"""DP through whole rounds: the federation's budget, the records, restarts, and devices' own budgets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from trainer.data.registry import load_federated_corpus
from trainer.device import Report, Task, run_task
from trainer.factors import LoraFactors, ModuleShape
from trainer.local_train import TrainConfig
from trainer.privacy import ExampleDP, UserDP
from trainer.privacy.device_side import BudgetExhaustedError, DevicePrivacy, private_update
from trainer.privacy.federation import FederationPrivacy, PrivacyBudgetExceededError
from trainer.round_engine import RoundEngine
from trainer.store import DirectoryStore, MemoryStore
from trainer.strategies import StrategyConfig, make_strategy, update_strategy_names

SHAPES = {"m.q_proj": ModuleShape(6, 5)}
RANKS = {f"d{i}": r for i, r in enumerate([1, 2, 4, 4, 3, 2, 1, 4])}
USER = UserDP(clip_norm=0.5, noise_multiplier=2.0, delta=1e-5, epsilon_budget=3.0, mode="distributed")


def engine(store=None, user: UserDP = USER, name: str = "hetlora-rebase") -> RoundEngine:
    s = make_strategy(name, StrategyConfig(r_min=1, r_max=4))
    store = store if store is not None else MemoryStore(s.initial(SHAPES, 0))
    return RoundEngine(s, store, RANKS, per_round=4, seed=0, privacy=FederationPrivacy(user))


def report(e: RoundEngine, task: Task, client: str, user: UserDP) -> Report:
    rng = np.random.default_rng(abs(hash(client)) % 1000)
    trained = {m: LoraFactors(f.B + rng.normal(0, 1, f.B.shape), f.A + rng.normal(0, 1, f.A.shape))
               for m, f in task.factors.items()}  # fmt: skip
    update = e.strategy.contribution(task.factors, trained, 10)
    clipped, norm = private_update(update, user, task.component_cohorts, np.random.default_rng(1))
    assert norm > user.clip_norm  # these updates are large: clipping bites
    return Report(client, task.rank, task.rank, clipped, 1.0, 10)


def run_round(e: RoundEngine, index: int, user: UserDP = USER):
    plan = e.plan(index)
    tasks = e.tasks(plan)
    return e.finish(plan, [report(e, t, c, user) for c, t in tasks.items()], [])


def test_rounds_spend_the_budget_then_the_next_round_is_refused_with_the_numbers() -> None:
    e = engine()
    spent = []
    with pytest.raises(PrivacyBudgetExceededError, match=r"budget ε=3 .*would be exceeded.*raise the budget"):
        for index in range(1, 100):
            spent.append(run_round(e, index).extra["privacy"]["epsilon"])
    assert len(spent) >= 2 and spent == sorted(spent) and spent[-1] <= USER.epsilon_budget
    record = e.store.record(len(spent))["privacy"]
    assert record["unit"] == "user" and record["sample_rate"] == 0.5 and record["accountant"] == "prv"
    assert record["effective_noise_multiplier"] >= 2.0  # nobody dropped or pruned: shares over-provisioned


def test_a_restarted_orchestrator_continues_the_ledger_from_the_committed_version(tmp_path: Path) -> None:
    s = make_strategy("hetlora-rebase", StrategyConfig(r_min=1, r_max=4))
    first = engine(DirectoryStore(tmp_path, s.initial(SHAPES, 0), base_model="tiny"))
    eps = [run_round(first, i).extra["privacy"]["epsilon"] for i in (1, 2)]
    again = engine(DirectoryStore(tmp_path))
    assert again.privacy is not None and again.privacy.spent() == pytest.approx(eps[-1])
    assert run_round(again, 3).extra["privacy"]["epsilon"] > eps[-1]


def test_dropouts_beyond_the_tolerance_lower_the_noise_charged_in_distributed_mode_only() -> None:
    cases = (
        ("distributed", 0.0, lambda s: s < 2.0),  # no slack: one dropout lowers the released noise
        ("distributed", 0.5, lambda s: s >= 2.0),  # shares over-provisioned for it: still σS or more
        ("central", 0.0, lambda s: s == 2.0),
    )
    for mode, tolerance, expected in cases:
        user = dataclasses.replace(USER, mode=mode, epsilon_budget=math.inf, dropout_tolerance=tolerance)
        e = engine(user=user)
        plan = e.plan(1)
        tasks = e.tasks(plan)
        reports = [report(e, t, c, user) for c, t in list(tasks.items())[1:]]
        out = e.finish(plan, reports, [plan.cohort[0]])
        assert expected(out.extra["privacy"]["effective_noise_multiplier"]), (mode, tolerance)


def test_user_level_dp_needs_a_strategy_that_uploads_updates() -> None:
    for name in ("hetlora", "homlora", "flexlora"):
        with pytest.raises(ValueError, match=r"uploads (factors|full products), not updates") as err:
            engine(name=name)
        assert "hetlora-spread" in str(err.value) and "flexlora" not in str(err.value).split("use one of")[1]


def test_every_strategy_that_uploads_updates_is_offered_for_user_level_dp() -> None:
    offered = set(update_strategy_names())
    assert offered == {"hetlora-rebase", "hetlora-spread"}
    assert not offered & {"hetlora", "homlora", "flexlora"}


def test_a_device_stops_when_its_example_level_budget_is_spent(tokenizer, tiny_model_factory) -> None:
    data = load_federated_corpus("chitchat", tokenizer, 1, 32, heldout_blocks=1)[0]
    model = tiny_model_factory(0)
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    privacy = DevicePrivacy(ExampleDP(max_grad_norm=1.0, target_epsilon=4.0, accountant="rdp", rounds_horizon=2))
    factors = strategy.distribute(strategy.initial(_shapes(model), 0), 2)
    train = TrainConfig(steps=2, batch_size=2, lr=1e-3)
    spent = []
    for round_index in (1, 2):
        r = run_task(strategy, model, data, Task(round_index, 0, 2, factors, round_index), train, privacy)
        assert r.example_privacy is not None and r.example_privacy.unit == "example"
        spent.append(r.example_privacy.epsilon)
    assert spent[0] < spent[1] == pytest.approx(4.0, abs=0.05)
    with pytest.raises(BudgetExhaustedError, match=r"budget ε=4\.0"):
        run_task(strategy, model, data, Task(3, 0, 2, factors, 3), train, privacy)


def _shapes(model) -> dict:
    from trainer.peft_bridge import adapted_modules

    return adapted_modules(model)
