"""Strategy semantics on small numpy factors: distribution, contributions, aggregation, the registry."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.factors import LoraFactors, ModuleShape
from trainer.flex_math import ThinSVD
from trainer.lora_math import apply_component_deltas, product_norm
from trainer.scaling import Scaling
from trainer.strategies import (
    DEFAULT_STRATEGY,
    EXPERIMENTAL,
    StrategyConfig,
    make_strategy,
    strategy_names,
    sum_contributions,
)
from trainer.strategies.hetlora import HetLoRA

SHAPES = {"m.q_proj": ModuleShape(6, 5), "m.k_proj": ModuleShape(3, 5)}
CFG = StrategyConfig(r_min=1, r_max=4)


def random_factors(rng: np.random.Generator, rank: int) -> dict[str, LoraFactors]:
    return {
        m: LoraFactors(
            rng.normal(size=(s.d_out, rank)).astype(np.float32), rng.normal(size=(rank, s.d_in)).astype(np.float32)
        )
        for m, s in SHAPES.items()
    }


def test_registry_offers_the_documented_strategies_and_rejects_unknown() -> None:
    assert strategy_names() == ("homlora", "homlora-max", "hetlora", "flexlora", "hetlora-rebase", "hetlora-spread")
    assert DEFAULT_STRATEGY in strategy_names() and set(strategy_names()) > EXPERIMENTAL
    with pytest.raises(ValueError, match="choose from"):
        make_strategy("fedprox", CFG)


def test_initial_is_standard_lora_init_shared_across_strategies() -> None:
    het = make_strategy("hetlora", CFG).initial(SHAPES, seed=3)
    hom = make_strategy("homlora", CFG).initial(SHAPES, seed=3)
    for m in SHAPES:
        assert not het.factors[m].B.any()
        np.testing.assert_array_equal(het.factors[m].A[:1], hom.factors[m].A)


def test_hetlora_distributes_leading_components_and_weights_by_product_norm() -> None:
    rng = np.random.default_rng(0)
    het = make_strategy("hetlora", CFG)
    glob = het.initial(SHAPES, 0)
    sent = het.distribute(glob, 2)
    np.testing.assert_array_equal(sent["m.q_proj"].A, glob.factors["m.q_proj"].A[:2])
    trained = random_factors(rng, 2)
    c = het.contribution(sent, trained, num_examples=10)
    assert c.weight["m.q_proj"] == pytest.approx(product_norm(trained["m.q_proj"]))
    client_cfg = StrategyConfig(r_min=1, r_max=4, sparsity_weighting="client")
    client_weighted = HetLoRA(client_cfg).contribution(sent, trained, 10)
    assert len(set(client_weighted.weight.values())) == 1


def test_paper_rule_kills_components_nobody_in_the_cohort_trained() -> None:
    """As published: zero-padding then replacement, so a component above the cohort's largest rank is zero."""
    rng = np.random.default_rng(1)
    reports = [random_factors(rng, 1), random_factors(rng, 2)]
    s = make_strategy("hetlora", CFG)
    sums = sum_contributions([s.contribution({}, f, 5) for f in reports], CFG.r_max)
    new = s.aggregate(s.initial(SHAPES, 0), sums)
    assert not new.factors["m.q_proj"].A[2:].any() and not new.factors["m.q_proj"].B[:, 2:].any()


def test_homlora_is_fedavg_weighted_by_examples() -> None:
    rng = np.random.default_rng(2)
    hom = make_strategy("homlora", CFG)
    glob = hom.initial(SHAPES, 0)
    fs = [random_factors(rng, 1) for _ in range(3)]
    n = [1, 2, 7]
    new = hom.aggregate(
        glob, sum_contributions([hom.contribution({}, f, k) for f, k in zip(fs, n, strict=True)], hom.global_rank)
    )
    expect = sum(k * f["m.k_proj"].B for f, k in zip(fs, n, strict=True)) / 10
    np.testing.assert_allclose(new.factors["m.k_proj"].B, expect, atol=1e-6)
    assert make_strategy("homlora-max", CFG).client_rank(1) == 4 and hom.client_rank(3) == 1


@pytest.mark.parametrize("scaling", [Scaling("constant", 2.0), Scaling("alpha", 16.0), Scaling("rslora", 8.0)])
def test_flexlora_round_trip_gives_best_rank_r_effective_update(scaling: Scaling) -> None:
    rng = np.random.default_rng(4)
    cfg = StrategyConfig(r_min=1, r_max=4, scaling=scaling)
    flex = make_strategy("flexlora", cfg)
    glob = flex.initial(SHAPES, 0)
    ranks = [1, 3, 4]
    trained = [random_factors(rng, r) for r in ranks]
    n = [2, 1, 1]
    sums = sum_contributions([flex.contribution({}, f, k) for f, k in zip(trained, n, strict=True)], 4)
    new = flex.aggregate(glob, sums)
    W = sum(k * scaling.factor(r) * f["m.q_proj"].product() for f, r, k in zip(trained, ranks, n, strict=True)) / 4
    np.testing.assert_allclose(new.delta("m.q_proj"), W, atol=1e-4)
    for r in (1, 2, 4):
        sent = flex.distribute(new, r)["m.q_proj"]
        effective = scaling.factor(r) * sent.product()
        best = ThinSVD.of(W).factors(r, 1.0).product()
        np.testing.assert_allclose(effective, best, atol=1e-4)


def test_contribution_upload_sizes() -> None:
    rng = np.random.default_rng(5)
    f = random_factors(rng, 3)
    het = make_strategy("hetlora", CFG).contribution({}, f, 1)
    flex = make_strategy("flexlora", CFG).contribution({}, f, 1)
    assert het.upload_floats() == 2 + 3 * (6 + 5) + 3 * (3 + 5)
    assert flex.upload_floats() == 2 + 6 * 5 + 3 * 5


def moved(factors: dict[str, LoraFactors], rank: int) -> dict[str, LoraFactors]:
    """The global with its leading ``rank`` components shifted by +1 in B and −1 in A."""
    out = {}
    for m, f in factors.items():
        B, A = f.B.copy(), f.A.copy()
        B[:, :rank] += 1.0
        A[:rank] -= 1.0
        out[m] = LoraFactors(B, A)
    return out


@pytest.mark.parametrize("name", ["hetlora-rebase", "hetlora-spread"])
def test_delta_aggregation_equals_fedavg_for_equal_ranks_and_keeps_untrained(name: str) -> None:
    rng = np.random.default_rng(6)
    delta = make_strategy(name, CFG)
    hom = make_strategy("homlora-max", CFG)
    glob = delta.initial(SHAPES, 0)
    glob = type(glob)(random_factors(rng, 4), glob.scale)
    sent = delta.distribute(glob, 4)
    trained = [random_factors(rng, 4) for _ in range(3)]
    n = [3, 1, 2]
    d_sums = sum_contributions([delta.contribution(sent, f, k) for f, k in zip(trained, n, strict=True)], 4)
    h_sums = sum_contributions([hom.contribution(sent, f, k) for f, k in zip(trained, n, strict=True)], 4)
    for m in SHAPES:  # the same product; re-basing changes only its factorisation
        np.testing.assert_allclose(
            delta.aggregate(glob, d_sums).delta(m), hom.aggregate(glob, h_sums).delta(m), atol=1e-4
        )
    # Heterogeneous: only a rank-1 device reports; components 1..3 keep their values (up to the re-basing).
    low = delta.distribute(glob, 1)
    new = delta.aggregate(glob, sum_contributions([delta.contribution(low, moved(low, 1), 5)], 4))
    expect = type(glob)(moved(dict(glob.factors), 1), glob.scale)
    for m in SHAPES:
        np.testing.assert_allclose(new.delta(m), expect.delta(m), atol=1e-4)


def test_rebasing_gives_weak_devices_the_best_low_rank_update() -> None:
    rng = np.random.default_rng(7)
    reb = make_strategy("hetlora-rebase", CFG)
    glob = reb.initial(SHAPES, 0)
    glob = type(glob)(random_factors(rng, 4), glob.scale)
    sent = reb.distribute(glob, 4)
    sums = sum_contributions([reb.contribution(sent, random_factors(rng, 4), 1)], 4)
    new = reb.aggregate(glob, sums)
    for m in SHAPES:
        unbased = apply_component_deltas(glob.factors[m], sums.factor_sums[m])
        np.testing.assert_allclose(new.delta(m), glob.scale * unbased.product(), atol=1e-4)  # same global update
        weak = reb.distribute(new, 1)[m].product()
        best = ThinSVD.of(new.factors[m].product()).factors(1, 1.0).product()
        np.testing.assert_allclose(weak, best, atol=1e-4)


def test_rebase_keeps_components_nobody_trained_trainable() -> None:
    """From init (B = 0), a round where only rank-1 devices report leaves components 1..3 fresh, not dead."""
    rng = np.random.default_rng(3)
    reb = make_strategy("hetlora-rebase", CFG)
    glob = reb.initial(SHAPES, 0)
    low = reb.distribute(glob, 1)
    trained = {m: type(f)(f.B + rng.normal(size=f.B.shape), f.A) for m, f in low.items()}
    sums = sum_contributions([reb.contribution(low, trained, 5)], 4)
    for m in SHAPES:
        kept = reb.aggregate(glob, sums).factors[m]
        assert np.all(np.linalg.norm(kept.A[1:], axis=1) > 0.5)
        np.testing.assert_allclose(kept.B[:, 1:], 0.0, atol=1e-6)


def test_spread_trains_each_module_in_its_own_rotation_and_aggregates_like_rebase() -> None:
    spread, reb = make_strategy("hetlora-spread", CFG), make_strategy("hetlora-rebase", CFG)
    rng = np.random.default_rng(13)
    glob = type(spread.initial(SHAPES, 0))(random_factors(rng, 4), 1.0)
    sent = spread.distribute(glob, 3)
    basis = spread.training_basis(sent, seed=5)
    assert set(basis) == set(SHAPES) and not np.allclose(basis["m.q_proj"], basis["m.k_proj"])
    for q in basis.values():
        np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(spread.training_basis(sent, seed=5)["m.q_proj"], basis["m.q_proj"])
    assert all(make_strategy(n, CFG).training_basis(sent, 5) == {} for n in strategy_names() if n != "hetlora-spread")
    low, high = spread.distribute(glob, 1), spread.distribute(glob, 4)
    sums = sum_contributions(
        [spread.contribution(low, random_factors(rng, 1), 2), spread.contribution(high, random_factors(rng, 4), 3)], 4
    )
    for m in SHAPES:
        np.testing.assert_array_equal(spread.aggregate(glob, sums).factors[m].B, reb.aggregate(glob, sums).factors[m].B)
