"""The round engine with in-memory devices: cohorts, empty rounds, dropped clients, rank persistence."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.device import Report
from trainer.factors import LoraFactors, ModuleShape
from trainer.round_engine import RoundEngine
from trainer.store import MemoryStore
from trainer.strategies import StrategyConfig, make_strategy

SHAPES = {"m.q_proj": ModuleShape(4, 3)}
RANKS = {"a": 1, "b": 2, "c": 4, "d": 3}


def engine(name: str = "hetlora", seed: int = 0) -> RoundEngine:
    s = make_strategy(name, StrategyConfig(r_min=1, r_max=4))
    return RoundEngine(s, MemoryStore(s.initial(SHAPES, 0)), RANKS, per_round=3, seed=seed)


def fake_report(e: RoundEngine, client: str, rank: int, new_rank: int) -> Report:
    rng = np.random.default_rng(len(client) + rank)
    trained = {"m.q_proj": LoraFactors(rng.normal(size=(4, new_rank)), rng.normal(size=(new_rank, 3)))}
    return Report(client, rank, new_rank, e.strategy.contribution({}, trained, 5), 1.0, 5)


def test_cohorts_are_seeded_and_identical_across_strategies() -> None:
    assert engine("hetlora").plan(3).cohort == engine("flexlora").plan(3).cohort
    assert [engine(seed=1).plan(r).cohort for r in range(5)] != [engine(seed=2).plan(r).cohort for r in range(5)]


def test_tasks_truncate_to_each_device_rank() -> None:
    e = engine()
    plan = e.plan(1)
    tasks = e.tasks(plan)
    for c, t in tasks.items():
        assert t.rank == RANKS[c] and t.factors["m.q_proj"].rank == RANKS[c]


def test_empty_round_keeps_committed_version() -> None:
    e = engine()
    plan = e.plan(1)
    out = e.finish(plan, [], dropped=list(plan.cohort))
    assert not out.committed and out.version == 0 and e.store.latest()[0] == 0


def test_dropped_clients_are_explicit_and_pruned_rank_persists() -> None:
    e = engine()
    plan = e.plan(1)
    first, *rest = plan.cohort
    reports = [fake_report(e, c, plan.ranks[c], max(1, plan.ranks[c] - 1)) for c in rest]
    out = e.finish(plan, reports, dropped=[first])
    assert out.committed and out.version == 1 and out.dropped == (first,)
    for c in rest:
        assert e.device_ranks[c] == max(1, RANKS[c] - 1)
    assert e.device_ranks[first] == RANKS[first]
    with pytest.raises(ValueError, match="partition"):
        e.finish(plan, reports, dropped=[rest[0]])
