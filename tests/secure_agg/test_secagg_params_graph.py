"""The (k, t) parameter finder against Google's published table, and the Harary graph's shape."""

from __future__ import annotations

import os

import pytest

from secure_agg.errors import ConfigError
from secure_agg.graph import HararyGraph
from secure_agg.params import AdversaryClass, SecAggRequirements, choose_parameters, harary_parameters

CURIOUS, SEMI, NONE = AdversaryClass.CURIOUS_SERVER, AdversaryClass.SEMI_MALICIOUS_SERVER, AdversaryClass.NONE

# (n, adversarial rate, dropout rate, class, degree, threshold upper bound) from fcp's
# graph_parameter_finder_test.cc, as listed in spec/secure-aggregation-and-dp.md §1.2.
PUBLISHED = [
    (10, 0.05, 0.05, CURIOUS, 2, 2),
    (100, 0.05, 0.05, CURIOUS, 12, 6),
    (1000, 0.05, 0.05, CURIOUS, 30, 17),
    (10000, 0.05, 0.05, CURIOUS, 34, 20),
    (100, 0.05, 0.33, CURIOUS, 28, 6),
    (1000, 0.05, 0.33, CURIOUS, 72, 24),
    (1000, 0.05, 0.33, SEMI, 398, 223),
    (1000, 0.33, 0.05, CURIOUS, 78, 60),
    (1000, 0.33, 0.33, CURIOUS, 286, 150),
    (1000, 0.30, 0.30, SEMI, 872, 584),
    (1000000, 0.33, 0.33, CURIOUS, 518, 270),
    (10, 0.33, 0.33, CURIOUS, 8, 4),
    (100, 0.05, 0.05, SEMI, 16, 11),
    (10, 0.0, 0.33, NONE, 4, 2),
    (100, 0.0, 0.0, CURIOUS, 2, 2),
]


@pytest.mark.parametrize(("n", "adv", "drop", "cls", "degree", "t_max"), PUBLISHED)
def test_published_pairs(n: int, adv: float, drop: float, cls: AdversaryClass, degree: int, t_max: int) -> None:
    p = harary_parameters(n, SecAggRequirements(adv, drop, cls))
    assert p.degree == degree
    assert 2 <= p.threshold <= t_max
    assert p.threshold <= p.degree + 1


@pytest.mark.parametrize(
    ("adv", "drop", "cls"), [(0.1, 1.0, CURIOUS), (0.1, -1.0, CURIOUS), (0.5, 0.5, CURIOUS), (0.33, 0.33, SEMI)]
)
def test_infeasible_requirements_are_rejected(adv: float, drop: float, cls: AdversaryClass) -> None:
    with pytest.raises(ConfigError):
        SecAggRequirements(adv, drop, cls)


def test_small_cohorts_fall_back_to_the_complete_graph() -> None:
    with pytest.raises(ConfigError):
        harary_parameters(3, SecAggRequirements(0.05, 0.3))
    p = choose_parameters(3, SecAggRequirements(0.05, 0.3))
    assert p.complete and p.degree == 2 and p.threshold == 2


@pytest.mark.parametrize(("n", "k"), [(10, 2), (10, 4), (51, 12), (100, 26), (7, 6), (7, 10)])
def test_harary_graph_is_regular_and_symmetric(n: int, k: int) -> None:
    members = list(range(0, 3 * n, 3))
    g = HararyGraph.build(members, k, os.urandom(32))
    adj = g.adjacency()
    expected = min(k, n - 1)
    for c, nbrs in adj.items():
        assert len(nbrs) == expected and c not in nbrs
        assert nbrs == g.neighbours(c)
        for v in nbrs:
            assert c in adj[v]


def test_ring_order_depends_on_the_session() -> None:
    members = range(50)
    a = HararyGraph.build(members, 6, b"a" * 32)
    assert a == HararyGraph.build(reversed(range(50)), 6, b"a" * 32)
    assert a.ring != HararyGraph.build(members, 6, b"b" * 32).ring
