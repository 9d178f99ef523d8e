"""Key agreement, key derivation and share encryption: X25519, HKDF-SHA256 and AES-256-GCM.

Every derived key is salted with the session id (a hash over the round config and all advertised keys), so a
seed or share key from one round is useless in any other: this is what makes replayed messages harmless.
The two parties' ids are bound into the HKDF ``info`` in a canonical order, so both sides derive the same
pairwise seed and no two pairs share one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secure_agg.errors import VerificationError

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
NONCE_BYTES = 12
_INFO_PAIRWISE = b"hetlora/secagg/v1/pairwise-mask"
_INFO_SHARE_KEY = b"hetlora/secagg/v1/share-aead"


@dataclass(frozen=True)
class KeyPair:
    """A raw X25519 key pair (32-byte private scalar, 32-byte public point)."""

    private: bytes
    public: bytes

    @staticmethod
    def generate(entropy: Callable[[int], bytes] | None = None) -> KeyPair:
        """A fresh key pair; ``entropy`` (tests only) makes it deterministic."""
        raw = (entropy or os.urandom)(PRIVATE_KEY_BYTES)
        sk = X25519PrivateKey.from_private_bytes(raw)
        pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return KeyPair(raw, pk)


def public_from_private(private: bytes) -> bytes:
    """The public key that matches a (reconstructed) private key: used to check Shamir output."""
    sk = X25519PrivateKey.from_private_bytes(private)
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret; rejects malformed or low-order public keys with VerificationError."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise VerificationError(f"unusable X25519 public key: {exc}") from exc


def hkdf(secret: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _pair_info(label: bytes, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return label + struct.pack("<II", lo, hi)


def pairwise_seeds(
    private: bytes, peer_public: bytes, session_id: bytes, me: int, peer: int, buckets: Iterable[int]
) -> dict[int, bytes]:
    """The 32-byte PRG seeds ``me`` and ``peer`` share in this session, one per bucket.

    One X25519 agreement per pair and round, expanded per bucket with the bucket index in the HKDF info, so
    per-bucket cohorts do not multiply key agreement and no two buckets share a mask.
    """
    secret = agree(private, peer_public)
    info = _pair_info(_INFO_PAIRWISE, me, peer)
    return {j: hkdf(secret, session_id, info + struct.pack("<I", j)) for j in buckets}


def pairwise_seed(private: bytes, peer_public: bytes, session_id: bytes, me: int, peer: int, bucket: int = 0) -> bytes:
    """The seed of one bucket (see :func:`pairwise_seeds`)."""
    return pairwise_seeds(private, peer_public, session_id, me, peer, (bucket,))[bucket]


def share_key(private: bytes, peer_public: bytes, session_id: bytes, me: int, peer: int) -> bytes:
    """The AES-256-GCM key protecting Shamir shares between ``me`` and ``peer`` in this session."""
    return hkdf(agree(private, peer_public), session_id, _pair_info(_INFO_SHARE_KEY, me, peer))


def _aad(session_id: bytes, sender: int, recipient: int) -> bytes:
    return session_id + struct.pack("<II", sender, recipient)


def seal(
    key: bytes,
    plaintext: bytes,
    session_id: bytes,
    sender: int,
    recipient: int,
    entropy: Callable[[int], bytes] | None = None,
) -> bytes:
    """Encrypt a share bundle; the direction and session are authenticated, the nonce is prepended."""
    nonce = (entropy or os.urandom)(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(session_id, sender, recipient))


def open_sealed(key: bytes, ciphertext: bytes, session_id: bytes, sender: int, recipient: int) -> bytes:
    """Decrypt a share bundle or raise VerificationError (tampered, wrong session, wrong direction)."""
    if len(ciphertext) < NONCE_BYTES + 16:
        raise VerificationError("share ciphertext is too short")
    try:
        return AESGCM(key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], _aad(session_id, sender, recipient)
        )
    except InvalidTag as exc:
        raise VerificationError(f"share ciphertext from {sender} to {recipient} failed authentication") from exc
