"""Known-answer and property tests for the crypto primitives: HKDF, X25519, PRG, Shamir, AEAD, session id."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import keys as kx
from secure_agg import prg, shamir
from secure_agg.config import session_id
from secure_agg.errors import AbortedError, MalformedMessageError, VerificationError


def test_hkdf_rfc5869_case_1() -> None:
    okm = kx.hkdf(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_x25519_rfc7748_vector() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert kx.public_from_private(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    bob_pub = kx.public_from_private(bob)
    assert bob_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert kx.agree(alice, bob_pub).hex() == shared


def test_pairwise_seed_is_symmetric_and_session_bound() -> None:
    a, b = kx.KeyPair.generate(), kx.KeyPair.generate()
    s1, s2 = os.urandom(32), os.urandom(32)
    ab = kx.pairwise_seed(a.private, b.public, s1, 3, 7)
    assert ab == kx.pairwise_seed(b.private, a.public, s1, 7, 3)
    assert ab != kx.pairwise_seed(a.private, b.public, s2, 3, 7)
    assert ab != kx.share_key(a.private, b.public, s1, 3, 7)


def test_low_order_public_key_is_rejected() -> None:
    with pytest.raises(VerificationError):
        kx.agree(kx.KeyPair.generate().private, bytes(32))


def test_prg_known_answer_aes256_zero_key() -> None:
    # FIPS-197-style vector: AES-256 of the zero block under the zero key is the first keystream block.
    words = prg.expand(bytes(32), 4)
    assert words.tobytes().hex() == "dc95c078a2408989ad48a21492842087"


@pytest.mark.parametrize("n_words", [1, 3, 4, 1000, prg.CHUNK_WORDS, prg.CHUNK_WORDS + 5, 3 * prg.CHUNK_WORDS + 1])
def test_prg_matches_direct_cryptography_computation(n_words: int) -> None:
    seed = hashlib.sha256(str(n_words).encode()).digest()
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    expected = np.frombuffer(enc.update(bytes(4 * n_words)) + enc.finalize(), dtype="<u4")
    np.testing.assert_array_equal(prg.expand(seed, n_words), expected)


def test_prg_rejects_short_seed() -> None:
    with pytest.raises(ValueError):
        prg.expand(bytes(16), 4)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(1, 3 * prg.CHUNK_WORDS // 2), st.randoms(use_true_random=False))
def test_pairwise_masks_cancel(n: int, dim: int, rnd: object) -> None:
    seeds = {(i, j): os.urandom(32) for i in range(n) for j in range(i + 1, n)}
    total = np.zeros(dim, dtype=np.uint32)
    for u in range(n):
        y = np.zeros(dim, dtype=np.uint32)
        plus = [s for (i, j), s in seeds.items() if i == u]
        minus = [s for (i, j), s in seeds.items() if j == u]
        prg.add_masks(y, plus=plus, minus=minus)
        total += y
    assert not total.any()


def test_shamir_known_vector() -> None:
    # f(x) = 42 + 7x + 3x^2 at x = id + 1 for ids 0, 1, 2.
    points = {0: (52).to_bytes(33, "big"), 1: (68).to_bytes(33, "big"), 2: (90).to_bytes(33, "big")}
    assert shamir.interpolate_at_zero(points) == 42
    assert shamir.combine(points, 3) == (42).to_bytes(32, "big")


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_shamir_any_t_reconstruct_and_t_minus_1_do_not(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 12))
    t = data.draw(st.integers(1, n))
    holders = data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, t, holders)
    subset = data.draw(st.lists(st.sampled_from(holders), min_size=t, max_size=t, unique=True))
    assert shamir.combine({h: shares[h] for h in subset}, t) == secret
    if t > 1:
        fewer = {h: shares[h] for h in subset[: t - 1]}
        with pytest.raises(AbortedError):
            shamir.combine(fewer, t)
        assert shamir.interpolate_at_zero(fewer) != int.from_bytes(secret, "big")


def test_shamir_rejects_garbage_shares() -> None:
    with pytest.raises(MalformedMessageError):
        shamir.interpolate_at_zero({0: b"\x01" * 5})
    with pytest.raises(MalformedMessageError):
        shamir.interpolate_at_zero({0: b"\xff" * 33})


def test_aead_round_trip_and_tampering() -> None:
    a, b = kx.KeyPair.generate(), kx.KeyPair.generate()
    sid = os.urandom(32)
    k = kx.share_key(a.private, b.public, sid, 1, 2)
    ct = kx.seal(k, b"share bundle", sid, 1, 2)
    assert kx.open_sealed(kx.share_key(b.private, a.public, sid, 2, 1), ct, sid, 1, 2) == b"share bundle"
    with pytest.raises(VerificationError):
        kx.open_sealed(k, ct, sid, 2, 1)  # wrong direction
    with pytest.raises(VerificationError):
        kx.open_sealed(k, ct, os.urandom(32), 1, 2)  # replayed into another session
    with pytest.raises(VerificationError):
        kx.open_sealed(k, ct[:-1] + bytes([ct[-1] ^ 1]), sid, 1, 2)


def test_session_id_known_answer_and_binding() -> None:
    digest = bytes(range(32))
    keys = {2: (b"\x02" * 32, b"\x03" * 32), 1: (b"\x00" * 32, b"\x01" * 32)}
    expected = hashlib.sha256(
        b"hetlora/secagg/v1/session"
        + digest
        + (1).to_bytes(4, "little")
        + b"\x00" * 32
        + b"\x01" * 32
        + (2).to_bytes(4, "little")
        + b"\x02" * 32
        + b"\x03" * 32
    ).digest()
    assert session_id(digest, keys) == expected
    assert session_id(digest, {**keys, 2: (b"\x02" * 32, b"\x04" * 32)}) != expected
    assert session_id(bytes(32), keys) != expected
