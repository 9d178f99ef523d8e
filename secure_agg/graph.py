"""The masking/sharing graph: a k-regular Harary graph over the clients that advertised keys.

Clients sit on a ring in a pseudo-random order and each one is joined to its k/2 predecessors and k/2
successors (Bell et al. 2020). The order is derived from the session id — a hash over the round config and
every advertised key — so every client computes the same graph locally, and the server cannot pick a
convenient ring without also changing the keys it committed to. k >= n − 1 gives the complete graph of
Bonawitz 2017. Building the graph over the clients that actually advertised (instead of the sampled cohort)
is what lets a client lost during key exchange simply disappear from its neighbours' lists.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class HararyGraph:
    """Neighbourhoods over ``members`` (sorted ids), ordered on a ring by HMAC(session_id, id)."""

    ring: tuple[int, ...]
    degree: int

    @staticmethod
    def build(members: Iterable[int], degree: int, session_id: bytes) -> HararyGraph:
        ids = sorted(set(members))

        def rank(cid: int) -> bytes:
            return hmac.new(session_id, b"hetlora/secagg/v1/ring" + struct.pack("<I", cid), hashlib.sha256).digest()

        return HararyGraph(tuple(sorted(ids, key=rank)), degree)

    @property
    def complete(self) -> bool:
        return self.degree >= len(self.ring) - 1

    def neighbours(self, cid: int) -> tuple[int, ...]:
        """The client's neighbours (itself excluded), sorted by id."""
        n = len(self.ring)
        if self.complete:
            return tuple(sorted(c for c in self.ring if c != cid))
        pos = self.ring.index(cid)
        half = self.degree // 2
        out = {self.ring[(pos + off) % n] for off in range(-half, half + 1) if off != 0}
        return tuple(sorted(out))

    def adjacency(self) -> dict[int, tuple[int, ...]]:
        """Every member's neighbours (the server needs all of them)."""
        if self.complete:
            return {cid: self.neighbours(cid) for cid in self.ring}
        n, half = len(self.ring), self.degree // 2
        return {
            cid: tuple(sorted({self.ring[(pos + off) % n] for off in range(-half, half + 1) if off != 0}))
            for pos, cid in enumerate(self.ring)
        }
