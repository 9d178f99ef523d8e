"""t-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Why this field: it is the smallest prime above 2^256, so a whole X25519 private key or PRG seed is one field
element (Flower splits a 306-byte PEM key into 20 chunks and pays for 20 reconstructions). Share x-coordinates
are client ids + 1, so a share is identified by its holder. Reconstruction is Lagrange interpolation at 0 with
one modular inversion per secret (batched denominators).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence

from secure_agg.errors import AbortedError, ConfigError, MalformedMessageError

PRIME = (1 << 256) + 297
ELEMENT_BYTES = 33  # 257-bit field elements, big-endian
SECRET_BYTES = 32


def _random_element(entropy: Callable[[int], bytes] | None) -> int:
    if entropy is None:
        return secrets.randbelow(PRIME)
    # 48 bytes reduced mod p: statistical distance 2^-127 from uniform.
    return int.from_bytes(entropy(48), "big") % PRIME


def split(
    secret: bytes,
    threshold: int,
    holders: Sequence[int],
    entropy: Callable[[int], bytes] | None = None,
) -> dict[int, bytes]:
    """Share ``secret`` among ``holders`` (client ids); any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if threshold < 1 or threshold > len(holders):
        raise ConfigError(f"threshold {threshold} must be in [1, {len(holders)}] holders")
    if len(set(holders)) != len(holders) or any(h < 0 for h in holders):
        raise ConfigError("holders must be distinct non-negative ids")
    coeffs = [int.from_bytes(secret, "big")] + [_random_element(entropy) for _ in range(threshold - 1)]
    shares = {}
    for h in holders:
        x = h + 1
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        shares[h] = acc.to_bytes(ELEMENT_BYTES, "big")
    return shares


def interpolate_at_zero(points: Mapping[int, bytes]) -> int:
    """The value at 0 of the lowest-degree polynomial through the given (holder id, share) points."""
    xs = [h + 1 for h in points]
    ys = []
    for y in points.values():
        if len(y) != ELEMENT_BYTES:
            raise MalformedMessageError(f"a share is {ELEMENT_BYTES} bytes, got {len(y)}")
        v = int.from_bytes(y, "big")
        if v >= PRIME:
            raise MalformedMessageError("share value is not a field element")
        ys.append(v)
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        nums.append(num)
        dens.append(den)
    # One inversion for all denominators (Montgomery's trick).
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    total = 0
    for i in range(len(xs) - 1, -1, -1):
        inv_d = inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
        total = (total + ys[i] * nums[i] % PRIME * inv_d) % PRIME
    return total


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Reconstruct a secret from at least ``threshold`` shares (uses the first ``threshold`` given)."""
    if len(shares) < threshold:
        raise AbortedError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    chosen = dict(list(shares.items())[:threshold])
    value = interpolate_at_zero(chosen)
    if value >> (8 * SECRET_BYTES):
        raise AbortedError("shares are inconsistent: the reconstructed value is not a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
