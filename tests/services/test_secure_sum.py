"""Every factor strategy aggregates the same through SecAgg+ as in the clear (within the quantisation bound).

This is the library-level half of "simulation and services produce the same global adapter": the sums a
strategy sees come from masked, rank-bucketed uploads, with dropouts and an under-populated bucket.
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_agg import Stage
from services.secure_sum import SecureSumConfig, secure_factor_sums
from trainer.factors import LoraFactors, ModuleShape
from trainer.lora_math import truncate
from trainer.strategies import Contribution, StrategyConfig, make_strategy, sum_contributions

SHAPES = {"l0.q_proj": ModuleShape(6, 5), "l0.k_proj": ModuleShape(3, 5)}
RANKS = {1: 2, 2: 4, 3: 4, 4: 6, 5: 8, 6: 8}
CFG = StrategyConfig(r_min=2, r_max=8)


def trained(rng: np.random.Generator, rank: int) -> dict[str, LoraFactors]:
    return {
        m: LoraFactors(
            rng.normal(0, 0.05, (s.d_out, rank)).astype(np.float32),
            rng.normal(0, 0.2, (rank, s.d_in)).astype(np.float32),
        )
        for m, s in SHAPES.items()
    }


# Public weight bounds: example counts for FedAvg-style weights, ||B_k A_k||_F for HetLoRA's sparsity weights.
@pytest.mark.parametrize(
    ("name", "weight_bound"),
    [
        ("homlora-max", 1e3),
        ("hetlora", 10.0),
        ("hetlora-rebase", 1e3),
        ("hetlora-spread", 1e3),
    ],
)
def test_secure_aggregate_matches_plaintext_with_a_dropout(name: str, weight_bound: float) -> None:
    rng = np.random.default_rng(0)
    strategy = make_strategy(name, CFG)
    current = strategy.initial(SHAPES, seed=1)
    ranks = {c: strategy.client_rank(r) for c, r in RANKS.items()}
    contribs = {}
    for c, r in ranks.items():
        received = strategy.distribute(current, r)
        contribs[c] = (strategy.contribution(received, trained(rng, r), num_examples=100 * c), r)
    dropped = 3
    secure = secure_factor_sums(
        contribs,
        SHAPES,
        strategy.global_rank,
        round_id=7,
        cfg=SecureSumConfig(weight_bound=weight_bound),
        drop_at={dropped: Stage.MASKED_INPUT},
    )
    plain = sum_contributions([c for cid, (c, _) in contribs.items() if cid != dropped], strategy.global_rank)
    got = strategy.aggregate(current, secure)
    want = strategy.aggregate(current, plain)
    for m in SHAPES:
        np.testing.assert_allclose(got.delta(m), want.delta(m), atol=1e-5)
    assert secure.num_clients == len(RANKS) - 1


def test_bucket_below_threshold_is_never_unmasked_and_components_keep_their_value() -> None:
    strategy = make_strategy("hetlora-rebase", CFG)
    current = strategy.initial(SHAPES, seed=1)
    rng = np.random.default_rng(1)
    # Only client 5 trains components 6..7: its bucket has a cohort of 1 < min_cohort 2.
    ranks = {1: 2, 2: 2, 3: 6, 4: 6, 5: 8}
    contribs = {
        c: (strategy.contribution(strategy.distribute(current, r), trained(rng, r), 10), r) for c, r in ranks.items()
    }
    sums = secure_factor_sums(contribs, SHAPES, 8, round_id=1, cfg=SecureSumConfig(weight_bound=1e3, min_cohort=2))
    for m in SHAPES:
        assert np.all(sums.factor_sums[m].weight[6:] == 0)
        assert np.all(sums.factor_sums[m].weight[:6] > 0)
    # The global moves exactly as if client 5 had uploaded only its first 6 components.
    cut = [
        Contribution(c.weight, {m: truncate(f, min(f.rank, 6)) for m, f in c.factors.items()})
        for c, _ in contribs.values()
    ]
    want = strategy.aggregate(current, sum_contributions(cut, 8))
    new = strategy.aggregate(current, sums)
    for m in SHAPES:
        np.testing.assert_allclose(new.delta(m), want.delta(m), atol=1e-5)
