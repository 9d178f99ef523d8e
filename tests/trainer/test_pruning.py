"""Self-pruning golden vectors and the rounding table (spec §5.2)."""

import pytest
import torch

from trainer.pruning import PruneConfig, pruned_rank, tail_score, tail_start

B = torch.tensor([[1.0, 0, 2, 0], [0, 1, 0, 1], [0, 0, 0, 2]])
A = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 3]])


def test_tail_scores_golden() -> None:
    tau = tail_start(4, 0.5)
    assert tau == 2
    assert tail_score(B, A, tau).item() == pytest.approx(9.949874, abs=1e-5)
    assert tail_score(B, A, tau, "norm_of_product").item() == pytest.approx(7.280110, abs=1e-5)
    halved_B, halved_A = B.clone(), A.clone()
    halved_B[:, 2:] /= 2
    halved_A[2:] /= 2
    after = tail_score(halved_B, halved_A, tau).item()
    assert after == pytest.approx(2.487469, abs=1e-5)
    cfg = PruneConfig(gamma=0.5, r_min=1)
    assert pruned_rank(4, 9.949874, after, cfg) == 2


@pytest.mark.parametrize(
    ("r", "expected"),
    [(1, 0), (5, 4), (8, 7), (10, 9), (20, 19), (30, 29), (50, 49), (64, 63), (100, 99), (200, 198)],
)
def test_floor_not_round(r: int, expected: int) -> None:
    assert tail_start(r, 0.99) == expected


def test_exact_floor_for_binary_unfriendly_gamma() -> None:
    assert tail_start(100, 0.29) == 29  # 0.29 * 100 == 28.999999999999996 in floats


def test_penalty_has_gradient_on_live_parameters() -> None:
    b = B.clone().requires_grad_(True)
    a = A.clone().requires_grad_(True)
    tail_score(b, a, tail_start(4, 0.99)).backward()
    assert b.grad is not None and a.grad is not None
    assert b.grad[:, 3].abs().sum() > 0 and b.grad[:, :3].abs().sum() == 0


def test_prune_floor_and_no_prune_when_tail_grew() -> None:
    cfg = PruneConfig(gamma=0.99, r_min=4)
    assert pruned_rank(5, 2.0, 1.0, cfg) == 4
    assert pruned_rank(4, 2.0, 1.0, cfg) == 4  # ⌊0.99·4⌋ = 3 < r_min
    assert pruned_rank(5, 1.0, 2.0, cfg) == 5
    assert pruned_rank(5, 2.0, 1.0, PruneConfig(gamma=1.0)) == 5
