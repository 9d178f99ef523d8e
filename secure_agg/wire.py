"""A tiny length-checked binary codec for protocol messages (no protobuf: the library stays transport-free).

Every read is bounds-checked and raises :class:`MalformedMessageError`, so a truncated or padded message can
never be half-parsed into state.
"""

from __future__ import annotations

import struct

from secure_agg.errors import MalformedMessageError

MAX_BLOB = 1 << 31


class Writer:
    """Append-only builder for the wire format: fixed-width little-endian integers and length-prefixed blobs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack("<B", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack("<I", value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(struct.pack("<Q", value))
        return self

    def blob(self, data: bytes) -> Writer:
        self._parts.append(struct.pack("<I", len(data)))
        self._parts.append(bytes(data))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def ids(self, values: tuple[int, ...] | list[int]) -> Writer:
        self.u32(len(values))
        self._parts.append(struct.pack(f"<{len(values)}I", *values))
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Bounds-checked reader; :meth:`done` rejects trailing bytes."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._view):
            raise MalformedMessageError(
                f"truncated message: need {n} bytes at offset {self._pos}, have {len(self._view) - self._pos}"
            )
        out = self._view[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self._take(8))[0])

    def blob(self, max_len: int = MAX_BLOB) -> bytes:
        n = self.u32()
        if n > max_len:
            raise MalformedMessageError(f"field of {n} bytes exceeds its limit of {max_len}")
        return bytes(self._take(n))

    def fixed(self, n: int) -> bytes:
        return bytes(self._take(n))

    def rest(self) -> memoryview:
        return self._take(len(self._view) - self._pos)

    def ids(self, max_count: int = 1 << 20) -> tuple[int, ...]:
        n = self.u32()
        if n > max_count:
            raise MalformedMessageError(f"list of {n} ids exceeds its limit of {max_count}")
        return tuple(struct.unpack(f"<{n}I", self._take(4 * n)))

    def done(self) -> None:
        if self._pos != len(self._view):
            raise MalformedMessageError(f"{len(self._view) - self._pos} trailing bytes after the message")
