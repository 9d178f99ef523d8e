"""Typed protocol messages and their wire format.

Each message is a frozen dataclass with ``to_bytes``/``from_bytes``. The first byte is a type tag, so bytes of
one kind can never be parsed as another. Parsing is strict (sizes, counts, no trailing bytes) and raises
:class:`MalformedMessageError`; semantic checks (right round, right peers) are left to the state machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from secure_agg.errors import MalformedMessageError
from secure_agg.keys import PUBLIC_KEY_BYTES
from secure_agg.shamir import ELEMENT_BYTES
from secure_agg.wire import Reader, Writer

DIGEST_BYTES = 32
MAX_SIGNATURE = 512
MAX_CIPHERTEXT = 1 << 16
MAX_BUCKETS = 1 << 12

M = TypeVar("M", bound="Message")


class Message:
    """Base class: a one-byte tag, then the body."""

    TAG: ClassVar[int]

    def to_bytes(self) -> bytes:
        w = Writer().u8(self.TAG)
        self._write(w)
        return w.getvalue()

    @classmethod
    def from_bytes(cls: type[M], data: bytes | memoryview) -> M:
        r = Reader(data)
        tag = r.u8()
        if tag != cls.TAG:
            raise MalformedMessageError(f"expected a {cls.__name__} (tag {cls.TAG}), got tag {tag}")
        msg = cls._read(r)
        r.done()
        return msg

    def _write(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls: type[M], r: Reader) -> M:
        raise NotImplementedError


def _digest(r: Reader) -> bytes:
    return r.fixed(DIGEST_BYTES)


def _write_map(w: Writer, items: dict[int, bytes]) -> None:
    w.u32(len(items))
    for k in sorted(items):
        w.u32(k).blob(items[k])


def _read_map(r: Reader, max_len: int) -> dict[int, bytes]:
    n = r.u32()
    if n > 1 << 20:
        raise MalformedMessageError(f"map of {n} entries is too large")
    out: dict[int, bytes] = {}
    for _ in range(n):
        k = r.u32()
        if k in out:
            raise MalformedMessageError(f"duplicate key {k}")
        out[k] = r.blob(max_len)
    return out


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Stage 0, client → server: two X25519 public keys, signed with the identity key over the config."""

    TAG: ClassVar[int] = 1
    client_id: int
    config_digest: bytes
    enc_public: bytes
    mask_public: bytes
    signature: bytes

    def signed_payload(self) -> bytes:
        return advertise_payload(self.client_id, self.config_digest, self.enc_public, self.mask_public)

    def _write(self, w: Writer) -> None:
        w.u32(self.client_id).raw(self.config_digest).raw(self.enc_public).raw(self.mask_public)
        w.blob(self.signature)

    @classmethod
    def _read(cls, r: Reader) -> AdvertiseKeys:
        cid, digest = r.u32(), _digest(r)
        enc, mask = r.fixed(PUBLIC_KEY_BYTES), r.fixed(PUBLIC_KEY_BYTES)
        return cls(cid, digest, enc, mask, r.blob(MAX_SIGNATURE))


def advertise_payload(client_id: int, config_digest: bytes, enc_public: bytes, mask_public: bytes) -> bytes:
    """The bytes an advertisement signs: domain tag, config digest, id and both public keys."""
    return b"hetlora/secagg/v1/advertise" + config_digest + client_id.to_bytes(4, "little") + enc_public + mask_public


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Stage 0 → 1, server → clients: every advertisement the server accepted."""

    TAG: ClassVar[int] = 2
    config_digest: bytes
    entries: tuple[AdvertiseKeys, ...]

    def _write(self, w: Writer) -> None:
        w.raw(self.config_digest).u32(len(self.entries))
        for e in self.entries:
            w.blob(e.to_bytes())

    @classmethod
    def _read(cls, r: Reader) -> KeyDirectory:
        digest, n = _digest(r), r.u32()
        if n > 1 << 20:
            raise MalformedMessageError(f"directory of {n} entries is too large")
        return cls(digest, tuple(AdvertiseKeys.from_bytes(r.blob(4096)) for _ in range(n)))


@dataclass(frozen=True)
class ShareKeys(Message):
    """Stage 1, client → server: encrypted share bundles per neighbour, and commitments to self-mask seeds."""

    TAG: ClassVar[int] = 3
    client_id: int
    session_id: bytes
    seed_commitments: tuple[bytes, ...]
    ciphertexts: dict[int, bytes] = field(hash=False)

    def _write(self, w: Writer) -> None:
        w.u32(self.client_id).raw(self.session_id).u32(len(self.seed_commitments))
        for c in self.seed_commitments:
            w.raw(c)
        _write_map(w, self.ciphertexts)

    @classmethod
    def _read(cls, r: Reader) -> ShareKeys:
        cid, sid, n = r.u32(), _digest(r), r.u32()
        if n > MAX_BUCKETS:
            raise MalformedMessageError(f"{n} seed commitments exceed the bucket limit")
        commitments = tuple(r.fixed(DIGEST_BYTES) for _ in range(n))
        return cls(cid, sid, commitments, _read_map(r, MAX_CIPHERTEXT))


@dataclass(frozen=True)
class ShareRelay(Message):
    """Stage 1 → 2, server → one client: the bundles its neighbours encrypted for it."""

    TAG: ClassVar[int] = 4
    recipient: int
    session_id: bytes
    ciphertexts: dict[int, bytes] = field(hash=False)

    def _write(self, w: Writer) -> None:
        w.u32(self.recipient).raw(self.session_id)
        _write_map(w, self.ciphertexts)

    @classmethod
    def _read(cls, r: Reader) -> ShareRelay:
        return cls(r.u32(), _digest(r), _read_map(r, MAX_CIPHERTEXT))


@dataclass(frozen=True, eq=False)
class MaskedInput(Message):
    """Stage 2, client → server: the masked uint32 vector (4 bytes per element, little-endian)."""

    TAG: ClassVar[int] = 5
    client_id: int
    session_id: bytes
    vector: np.ndarray

    def _write(self, w: Writer) -> None:
        w.u32(self.client_id).raw(self.session_id).u64(self.vector.shape[0])
        w.raw(np.ascontiguousarray(self.vector, dtype="<u4").tobytes())

    @classmethod
    def _read(cls, r: Reader) -> MaskedInput:
        cid, sid, n = r.u32(), _digest(r), r.u64()
        body = r.rest()
        if len(body) != 4 * n:
            raise MalformedMessageError(f"masked vector declares {n} words but carries {len(body)} bytes")
        return cls(cid, sid, np.frombuffer(body, dtype="<u4"))


@dataclass(frozen=True)
class ConsistencyRequest(Message):
    """Stage 2 → 3, server → survivors: the set of clients whose masked input was received."""

    TAG: ClassVar[int] = 6
    session_id: bytes
    survivors: tuple[int, ...]

    def _write(self, w: Writer) -> None:
        w.raw(self.session_id).ids(self.survivors)

    @classmethod
    def _read(cls, r: Reader) -> ConsistencyRequest:
        return cls(_digest(r), r.ids())


def consistency_payload(session_id: bytes, survivors: tuple[int, ...]) -> bytes:
    """The bytes each client signs in the consistency check."""
    w = Writer().raw(b"hetlora/secagg/v1/consistency").raw(session_id).ids(survivors)
    return w.getvalue()


@dataclass(frozen=True)
class ConsistencySignature(Message):
    """Stage 3, client → server: identity signature over (session id, survivors)."""

    TAG: ClassVar[int] = 7
    client_id: int
    session_id: bytes
    signature: bytes

    def _write(self, w: Writer) -> None:
        w.u32(self.client_id).raw(self.session_id).blob(self.signature)

    @classmethod
    def _read(cls, r: Reader) -> ConsistencySignature:
        return cls(r.u32(), _digest(r), r.blob(MAX_SIGNATURE))


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Stage 3 → 4, server → signers: the survivors and at least t signatures over them."""

    TAG: ClassVar[int] = 8
    session_id: bytes
    survivors: tuple[int, ...]
    signatures: dict[int, bytes] = field(hash=False)

    def _write(self, w: Writer) -> None:
        w.raw(self.session_id).ids(self.survivors)
        _write_map(w, self.signatures)

    @classmethod
    def _read(cls, r: Reader) -> UnmaskRequest:
        return cls(_digest(r), r.ids(), _read_map(r, MAX_SIGNATURE))


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Stage 4, client → server: for each peer it holds shares of, the self-mask seed shares (peer survived,
    one per unmasked bucket) or the masking-key share (peer dropped) — never both for one peer."""

    TAG: ClassVar[int] = 9
    client_id: int
    session_id: bytes
    seed_shares: dict[int, tuple[bytes, ...]] = field(hash=False)
    key_shares: dict[int, bytes] = field(hash=False)

    def _write(self, w: Writer) -> None:
        w.u32(self.client_id).raw(self.session_id).u32(len(self.seed_shares))
        for owner in sorted(self.seed_shares):
            shares = self.seed_shares[owner]
            w.u32(owner).u32(len(shares))
            for s in shares:
                w.raw(s)
        w.u32(len(self.key_shares))
        for owner in sorted(self.key_shares):
            w.u32(owner).raw(self.key_shares[owner])

    @classmethod
    def _read(cls, r: Reader) -> UnmaskResponse:
        cid, sid = r.u32(), _digest(r)
        seed: dict[int, tuple[bytes, ...]] = {}
        for _ in range(_count(r)):
            owner, n = r.u32(), r.u32()
            if owner in seed or n > MAX_BUCKETS:
                raise MalformedMessageError(f"bad seed-share entry for {owner}")
            seed[owner] = tuple(r.fixed(ELEMENT_BYTES) for _ in range(n))
        keys: dict[int, bytes] = {}
        for _ in range(_count(r)):
            owner = r.u32()
            if owner in keys:
                raise MalformedMessageError(f"duplicate key share for {owner}")
            keys[owner] = r.fixed(ELEMENT_BYTES)
        return cls(cid, sid, seed, keys)


def _count(r: Reader) -> int:
    n = r.u32()
    if n > 1 << 20:
        raise MalformedMessageError(f"list of {n} entries is too large")
    return n
