"""Identity signatures for key advertisements and the consistency check, injected by the caller.

The services bind :class:`Verifier` to enrolled device certificates; this module only ships an Ed25519
implementation for tests, simulations and deployments that enrol raw Ed25519 keys. Signing the advertised
X25519 keys stops a server from substituting its own keys (a man in the middle on every pairwise mask).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class Signer(Protocol):
    """Signs with the device's identity key."""

    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a signature against the identity enrolled for ``client_id``."""

    def verify(self, client_id: int, message: bytes, signature: bytes) -> bool: ...


class Ed25519Signer:
    """A :class:`Signer` holding an Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @staticmethod
    def generate() -> Ed25519Signer:
        return Ed25519Signer(Ed25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class Ed25519Directory:
    """A :class:`Verifier` over a fixed map client id → raw Ed25519 public key."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        self._keys = {cid: Ed25519PublicKey.from_public_bytes(pk) for cid, pk in keys.items()}

    def verify(self, client_id: int, message: bytes, signature: bytes) -> bool:
        key = self._keys.get(client_id)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True
