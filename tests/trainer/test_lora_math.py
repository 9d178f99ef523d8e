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
    haar_orthogonal,
    normalize_weights,
    paper_average,
    product_norm,
    rotate,
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
def test_equal_ranks_reduce_to_fedavg_and_sums_are_additive(ranks: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = max(ranks)
    fs = [LoraFactors(rng.normal(size=(3, r)), rng.normal(size=(r, 2))) for _ in ranks]
    w = rng.uniform(0.1, 2.0, size=len(fs))
    sums = component_sums(fs, w.tolist(), r_max=r)
    glob = paper_average(sums)
    p = w / w.sum()
    np.testing.assert_allclose(glob.B, sum(pk * f.B for pk, f in zip(p, fs, strict=True)), atol=1e-5)
    np.testing.assert_allclose(glob.A, sum(pk * f.A for pk, f in zip(p, fs, strict=True)), atol=1e-5)
    # Sums are additive over clients: secure aggregation can sum in any grouping.
    half = len(fs) // 2
    if half:
        left = component_sums(fs[:half], w[:half].tolist(), r_max=r)
        right = component_sums(fs[half:], w[half:].tolist(), r_max=r)
        np.testing.assert_allclose((left + right).B, sums.B, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_svd_basis_keeps_product_and_a_rows_at_init_scale(r: int, seed: int) -> None:
    from trainer.flex_math import ThinSVD

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
    """Golden: B with one trained column. An even split of Σ would zero component 2; the init-scale one keeps A_2."""

    f = LoraFactors(np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    g = svd_basis(f)
    np.testing.assert_allclose(np.abs(g.A), LORA_INIT_A_ROW_NORM * np.eye(2), atol=1e-7)
    np.testing.assert_allclose(np.abs(g.B), [[2.0 / LORA_INIT_A_ROW_NORM, 0.0], [0.0, 0.0]], atol=1e-6)
    assert np.all(g.B[:, 1] == 0.0)  # untrained: B_2 = 0, a fresh LoRA component


def test_component_deltas_golden() -> None:
    """Two devices of weight 1 and 3, ranks 1 and 2: component 0 moves by the weighted mean change (1·δ1 + 3·δ2)/4,
    component 1, which only the second device trained, by that device's whole change, and an untrained
    component 2 not at all."""
    prev = LoraFactors(np.zeros((1, 3)), np.ones((3, 1)))
    d1 = LoraFactors(np.array([[4.0]]), np.array([[8.0]]))
    d2 = LoraFactors(np.array([[8.0, 4.0]]), np.array([[4.0], [8.0]]))
    out = apply_component_deltas(prev, component_sums([d1, d2], [1.0, 3.0], 3))
    np.testing.assert_allclose(out.B, [[7.0, 4.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(out.A, [[6.0], [9.0], [1.0]], rtol=1e-6)


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
