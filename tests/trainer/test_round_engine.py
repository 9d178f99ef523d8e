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


def test_a_rotated_round_base_is_what_devices_receive_and_what_the_sums_apply_to() -> None:
    """hetlora-rotate re-factorises the committed global per round; a cohort that changes nothing must leave
    the product unchanged, which only holds when finish() aggregates onto the same factors the tasks carried."""
    e = engine("hetlora-rotate")
    rng = np.random.default_rng(4)
    start = type(e.store.latest()[1])({"m.q_proj": LoraFactors(rng.normal(size=(4, 4)), rng.normal(size=(4, 3)))}, 2.0)
    e.store.commit(start, {})
    plan = e.plan(2)
    tasks = e.tasks(plan)
    assert dict(plan.ranks) == {"a": 1, "c": 4, "d": 3}  # ranks 1, 3, 4: components 1 and 2 form a block
    received, stored = tasks["d"].factors["m.q_proj"], start.factors["m.q_proj"]
    np.testing.assert_array_equal(received.B[:, 0], stored.B[:, 0].astype(np.float32))
    assert not np.allclose(received.B[:, 1:3], stored.B[:, 1:3])
    unchanged = [
        Report(c, t.rank, t.rank, e.strategy.contribution(t.factors, t.factors, 5), 1.0, 5) for c, t in tasks.items()
    ]
    e.finish(plan, unchanged, [])
    np.testing.assert_allclose(e.store.latest()[1].delta("m.q_proj"), start.delta("m.q_proj"), atol=1e-5)
