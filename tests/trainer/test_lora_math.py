"""Golden vectors (spec §5.2) and properties of the HetLoRA aggregation math."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.factors import LoraFactors
from trainer.lora_math import (
    LORA_INIT_A_ROW_NORM,
    apply_component_deltas,
    component_sums,
    coverage,
    coverage_average,
    haar_orthogonal,
    normalize_weights,
    paper_average,
    product_norm,
    rotate,
    rotate_within_blocks,
    svd_basis,
    truncate,
    zero_pad,
)

B1, A1 = np.array([[1.0], [0.0], [0.0]]), np.array([[2.0, 0.0]])
B2, A2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
TOY = [LoraFactors(B1, A1), LoraFactors(B2, A2)]


def test_sparsity_weights_golden() -> None:
    scores = [product_norm(f) for f in TOY]
    np.testing.assert_allclose(scores, [2.0, 1.414214], atol=1e-6)
    np.testing.assert_allclose(normalize_weights(scores), [0.585786, 0.414214], atol=1e-6)


def test_paper_aggregation_golden() -> None:
    p = normalize_weights([product_norm(f) for f in TOY])
    glob = paper_average(component_sums(TOY, p.tolist(), r_max=2))
    np.testing.assert_allclose(glob.B, [[0.585786, 0], [0.414214, 0], [0, 0.414214]], atol=1e-6)
    np.testing.assert_allclose(glob.A, [[1.171573, 0.414214], [0.414214, 0]], atol=1e-6)
    np.testing.assert_allclose(glob.product(), [[0.686292, 0.242641], [0.485281, 0.171573], [0.171573, 0]], atol=1e-6)
    ideal = sum(pk * f.product() for pk, f in zip(p, TOY, strict=True))
    np.testing.assert_allclose(ideal, [[1.171573, 0], [0, 0.414214], [0.414214, 0]], atol=1e-6)
    t = truncate(glob, 1)
    np.testing.assert_allclose(t.B[:, 0], [0.585786, 0.414214, 0], atol=1e-6)
    np.testing.assert_allclose(t.A[0], [1.171573, 0.414214], atol=1e-6)


def test_coverage_golden() -> None:
    np.testing.assert_allclose(coverage([1, 2, 4], [0.5, 0.3, 0.2], 4), [1, 0.5, 0.2, 0.2])


def test_coverage_average_uses_only_covering_clients_and_keeps_untrained() -> None:
    previous = LoraFactors(np.full((3, 3), 7.0), np.full((3, 2), 7.0))
    p = [0.6, 0.4]
    glob = coverage_average(component_sums(TOY, p, r_max=3), previous)
    # component 0: both clients; component 1: only client 2 (rank 2), undiluted; component 2: nobody.
    np.testing.assert_allclose(glob.B[:, 0], 0.6 * B1[:, 0] + 0.4 * B2[:, 0], atol=1e-6)
    np.testing.assert_allclose(glob.B[:, 1], B2[:, 1], atol=1e-6)
    np.testing.assert_allclose(glob.A[1], A2[1], atol=1e-6)
    np.testing.assert_allclose(glob.B[:, 2], 7.0)
    np.testing.assert_allclose(glob.A[2], 7.0)


def test_paper_rule_zeroes_untrained_components() -> None:
    glob = paper_average(component_sums(TOY, [0.5, 0.5], r_max=4))
    assert np.all(glob.B[:, 2:] == 0) and np.all(glob.A[2:] == 0)


def test_uniform_fallback_and_bad_weights() -> None:
    np.testing.assert_allclose(normalize_weights([0.0, 0.0]), [0.5, 0.5])
    with pytest.raises(ValueError):
        normalize_weights([-1.0, 2.0])
    with pytest.raises(ValueError):
        truncate(TOY[0], 2)
    with pytest.raises(ValueError):
        zero_pad(TOY[1], 1)


matrices = st.integers(1, 5).flatmap(
    lambda r: st.tuples(
        st.just(r),
        st.integers(0, 2**31 - 1),
    )
)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(1, 6), r_max=st.integers(6, 9), seed=st.integers(0, 2**31 - 1))
def test_pad_preserves_product_and_truncate_inverts_pad(r: int, r_max: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = LoraFactors(rng.normal(size=(4, r)), rng.normal(size=(r, 3)))
    padded = zero_pad(f, r_max)
    np.testing.assert_allclose(padded.product(), f.product(), atol=1e-12)
    back = truncate(padded, r)
    np.testing.assert_array_equal(back.B, f.B)
    np.testing.assert_array_equal(back.A, f.A)
    np.testing.assert_allclose(product_norm(f), np.linalg.norm(f.product()), rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    ranks=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
def test_equal_ranks_reduce_to_fedavg_and_coverage_matches_paper_at_full_coverage(ranks: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = max(ranks)
    fs = [LoraFactors(rng.normal(size=(3, r)), rng.normal(size=(r, 2))) for _ in ranks]
    w = rng.uniform(0.1, 2.0, size=len(fs))
    sums = component_sums(fs, w.tolist(), r_max=r)
    glob = paper_average(sums)
    p = w / w.sum()
    np.testing.assert_allclose(glob.B, sum(pk * f.B for pk, f in zip(p, fs, strict=True)), atol=1e-5)
    cov = coverage_average(sums, LoraFactors(np.zeros((3, r)), np.zeros((r, 2))))
    np.testing.assert_allclose(cov.A, glob.A, atol=1e-5)
    # Sums are additive over clients: secure aggregation can sum in any grouping.
    half = len(fs) // 2
    if half:
        left = component_sums(fs[:half], w[:half].tolist(), r_max=r)
        right = component_sums(fs[half:], w[half:].tolist(), r_max=r)
        np.testing.assert_allclose((left + right).B, sums.B, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_balanced_svd_basis_keeps_product_orders_components_and_balances(r: int, seed: int) -> None:
    from trainer.flex_math import ThinSVD
    from trainer.lora_math import balanced_svd_basis

    rng = np.random.default_rng(seed)
    f = LoraFactors(rng.normal(size=(7, r)) * 3, rng.normal(size=(r, 5)) * 0.1)
    g = balanced_svd_basis(f)
    np.testing.assert_allclose(g.product(), f.product(), atol=1e-5)
    col = np.linalg.norm(g.B, axis=0)
    np.testing.assert_allclose(col, np.linalg.norm(g.A, axis=1), rtol=1e-4)  # √σ_j in both factors
    assert np.all(np.diff(col) <= 1e-6)  # descending singular values
    for k in range(1, r + 1):
        best = ThinSVD.of(f.product()).factors(k, 1.0).product()
        np.testing.assert_allclose(truncate(g, k).product(), best, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_svd_basis_keeps_product_and_a_rows_at_init_scale(r: int, seed: int) -> None:
    from trainer.flex_math import ThinSVD
    from trainer.lora_math import LORA_INIT_A_ROW_NORM, svd_basis

    rng = np.random.default_rng(seed)
    f = LoraFactors(rng.normal(size=(7, r)) * 3, rng.normal(size=(r, 9)) * 0.1)
    g = svd_basis(f)
    np.testing.assert_allclose(g.product(), f.product(), atol=1e-5)
    gram = g.A.astype(np.float64) @ g.A.T
    np.testing.assert_allclose(gram, LORA_INIT_A_ROW_NORM**2 * np.eye(r), atol=1e-5)
    assert np.all(np.diff(np.linalg.norm(g.B, axis=0)) <= 1e-5)  # σ_j descending
    for k in range(1, r + 1):
        best = ThinSVD.of(f.product()).factors(k, 1.0).product()
        np.testing.assert_allclose(truncate(g, k).product(), best, atol=1e-4)


def test_svd_basis_keeps_untrained_components_alive() -> None:
    """Golden: B with one trained column. The balanced split zeroes component 2; the init-scale one keeps A_2."""
    from trainer.lora_math import LORA_INIT_A_ROW_NORM, balanced_svd_basis, svd_basis

    f = LoraFactors(np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    g = svd_basis(f)
    np.testing.assert_allclose(np.abs(g.A), LORA_INIT_A_ROW_NORM * np.eye(2), atol=1e-7)
    np.testing.assert_allclose(np.abs(g.B), [[2.0 / LORA_INIT_A_ROW_NORM, 0.0], [0.0, 0.0]], atol=1e-6)
    dead = balanced_svd_basis(f)
    assert np.allclose(dead.A[1], 0.0) and np.allclose(dead.B[:, 1], 0.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    edges=st.lists(st.integers(1, 8), max_size=4),
)
def test_rotating_within_blocks_keeps_the_product_and_every_edge_truncation(seed: int, edges: list[int]) -> None:
    rng = np.random.default_rng(seed)
    f = svd_basis(LoraFactors(rng.normal(size=(9, 8)), rng.normal(size=(8, 10))))
    rotated = rotate_within_blocks(f, edges, np.random.default_rng(seed + 1))
    np.testing.assert_allclose(rotated.product(), f.product(), atol=1e-4)
    for e in {*edges, 8}:
        np.testing.assert_allclose(truncate(rotated, e).product(), truncate(f, e).product(), atol=1e-4)
    gram = rotated.A.astype(np.float64) @ rotated.A.T.astype(np.float64)  # A's rows stay orthogonal at init norm
    np.testing.assert_allclose(gram, np.eye(8) * LORA_INIT_A_ROW_NORM**2, atol=1e-5)


def test_rotation_spreads_the_norm_of_b_inside_a_block() -> None:
    """Golden case: B = diag(3, 0), A = I: the SVD basis puts all of B's norm on column 0; a rotation by θ
    puts 3cosθ and 3sinθ on the two columns, so Σ_j ‖B_j‖ grows from 3 to 3(|cosθ| + |sinθ|)."""
    f = LoraFactors(np.diag([3.0, 0.0]).astype(np.float32), np.eye(2, dtype=np.float32))
    q = haar_orthogonal(2, np.random.default_rng(0))
    rotated = rotate_within_blocks(f, [], np.random.default_rng(0))
    np.testing.assert_allclose(rotated.B, f.B @ q, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rotated.B, axis=0).sum(), 3 * np.abs(q[0]).sum(), rtol=1e-6)
    assert np.linalg.norm(rotated.B, axis=0).sum() > 3.0
    np.testing.assert_array_equal(rotate_within_blocks(f, [1], np.random.default_rng(0)).B, f.B)  # 1-wide blocks


def test_fedavg_deltas_golden() -> None:
    """Damping 1 is FedAvg of zero-padded changes: devices of weight 1 and 3, ranks 1 and 2; component 0 moves
    by (1·δ1 + 3·δ2) / 4 and component 1, which only the second device trained, by 3·δ2 / 4."""
    prev = LoraFactors(np.zeros((1, 2)), np.zeros((2, 1)))
    d1 = LoraFactors(np.array([[4.0]]), np.array([[8.0]]))
    d2 = LoraFactors(np.array([[8.0, 4.0]]), np.array([[4.0], [8.0]]))
    out = apply_component_deltas(prev, component_sums([d1, d2], [1.0, 3.0], 2), damping=1.0)
    np.testing.assert_allclose(out.B, [[7.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(out.A, [[5.0], [6.0]], rtol=1e-6)


def test_damped_deltas_golden() -> None:
    """Two devices of weight 1, ranks 1 and 2: component 0 moves by their mean change, component 1 (trained by
    one device of a cohort weighing 2) by its change / √(1·2), and an untrained component 2 not at all."""
    prev = LoraFactors(np.zeros((2, 3)), np.ones((3, 2)))
    d1 = LoraFactors(np.array([[2.0], [0.0]]), np.array([[1.0, 1.0]]))
    d2 = LoraFactors(np.array([[4.0, 2.0], [0.0, 2.0]]), np.array([[3.0, 3.0], [2.0, 0.0]]))
    out = apply_component_deltas(prev, component_sums([d1, d2], [1.0, 1.0], 3), damping=0.5)
    np.testing.assert_allclose(out.B, [[3.0, 2 / np.sqrt(2), 0.0], [0.0, 2 / np.sqrt(2), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(out.A, [[3.0, 3.0], [1 + 2 / np.sqrt(2), 1.0], [1.0, 1.0]], rtol=1e-6)


def test_rotate_keeps_the_product_and_its_transpose_undoes_it() -> None:
    """Golden case: B = [[1, 2]], A = I, Q swaps the components: B·Q = [[2, 1]], Qᵀ·A = Q."""
    f = LoraFactors(np.array([[1.0, 2.0]], np.float32), np.eye(2, dtype=np.float32))
    q = np.array([[0.0, 1.0], [1.0, 0.0]])
    r = rotate(f, q)
    np.testing.assert_array_equal(r.B, [[2.0, 1.0]])
    np.testing.assert_array_equal(r.A, q)
    g = LoraFactors(np.random.default_rng(1).normal(size=(5, 3)), np.random.default_rng(2).normal(size=(3, 4)))
    h = haar_orthogonal(3, np.random.default_rng(3))
    np.testing.assert_allclose(rotate(g, h).product(), g.product(), atol=1e-5)
    np.testing.assert_allclose(rotate(rotate(g, h), h.T).B, g.B, atol=1e-5)
    with pytest.raises(ValueError, match="rank 3"):
        rotate(g, np.eye(2))
