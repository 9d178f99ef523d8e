"""FlexLoRA golden vectors (spec §5.2): compare products, never raw SVD factors."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.factors import LoraFactors
from trainer.flex_math import ThinSVD, weighted_product_average

B1, A1 = np.array([[1.0], [0.0], [0.0]]), np.array([[2.0, 0.0]])
B2, A2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])


def test_scale_one_golden() -> None:
    W = weighted_product_average([B1 @ A1, B2 @ A2], [1, 3])
    np.testing.assert_allclose(W, [[0.5, 0], [0, 0.75], [0.75, 0]])
    svd = ThinSVD.of(W)
    np.testing.assert_allclose(svd.S, [0.901388, 0.75], atol=1e-6)
    r1 = svd.factors(1, 1.0)
    np.testing.assert_allclose(r1.product(), [[0.5, 0], [0, 0], [0.75, 0]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(W - r1.product()), 0.75, atol=1e-6)
    np.testing.assert_allclose(svd.factors(2, 1.0).product(), W, atol=1e-6)


def test_alpha_16_golden() -> None:
    W = weighted_product_average([(16 / 1) * B1 @ A1, (16 / 2) * B2 @ A2], [1, 3])
    np.testing.assert_allclose(W, [[8, 0], [0, 6], [6, 0]])
    svd = ThinSVD.of(W)
    np.testing.assert_allclose(svd.S, [10, 6], atol=1e-9)
    r1 = svd.factors(1, 16 / 1)
    np.testing.assert_allclose(16 * r1.product(), [[8, 0], [0, 0], [6, 0]], atol=1e-5)
    np.testing.assert_allclose(np.abs(r1.B), [[0.5], [0], [0.375]], atol=1e-6)
    np.testing.assert_allclose(np.abs(r1.A), [[1, 0]], atol=1e-6)
    r2 = svd.factors(2, 16 / 2)
    np.testing.assert_allclose(8 * r2.product(), W, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(r=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 20))
def test_eckart_young_and_padding(r: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(5, 4))
    svd = ThinSVD.of(W)
    f = svd.factors(r, scale)
    k = min(r, 4)
    err = np.linalg.norm(W - scale * f.product().astype(np.float64))
    np.testing.assert_allclose(err, np.sqrt(np.sum(svd.S[k:] ** 2)), atol=1e-4)
    assert isinstance(f, LoraFactors) and f.rank == r
